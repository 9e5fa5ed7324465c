/* seqlat_tls - one sequential TLS client (as `openssl s_time`), per-connection
 * latency of full or resumed (TLS 1.2 ticket) handshakes: connect,
 * handshake, close; servers alternating in chunks; p10/p25/median/p75/mean.
 *   cc -O2 -o build/seqlat-tls scripts/bench/seqlat_tls.c -lssl -lcrypto
 *   build/seqlat-tls ROUNDS CHUNK new|reuse PORT...   (docs/benchmarks.md) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
  int rounds=atoi(argv[1]),chunk=atoi(argv[2]); int reuse=strcmp(argv[3],"reuse")==0; int np=argc-4;
  SSL_CTX*ctx=SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_max_proto_version(ctx,TLS1_2_VERSION);
  SSL_SESSION*sess[16]={0}; double*lat[16]; int nl[16]={0};
  for(int p=0;p<np;p++) lat[p]=malloc(sizeof(double)*rounds*chunk);
  for(int r=0;r<rounds;r++) for(int p=0;p<np;p++){
    struct sockaddr_in a={.sin_family=AF_INET,.sin_port=htons(atoi(argv[4+p]))}; a.sin_addr.s_addr=htonl(0x7f000001);
    for(int k=0;k<chunk;k++){
      double t0=now();
      int fd=socket(AF_INET,SOCK_STREAM,0);
      if(connect(fd,(void*)&a,sizeof a)){perror("connect");return 1;}
      SSL*s=SSL_new(ctx); SSL_set_fd(s,fd);
      if(reuse&&sess[p]) SSL_set_session(s,sess[p]);
      if(SSL_connect(s)!=1){fprintf(stderr,"handshake failed\n");return 1;}
      if(reuse&&!sess[p]) sess[p]=SSL_get1_session(s);
      else if (reuse && !SSL_session_reused(s)) {fprintf(stderr,"not resumed\n");}
      SSL_set_shutdown(s,SSL_SENT_SHUTDOWN|SSL_RECEIVED_SHUTDOWN);
      SSL_free(s); close(fd);
      double t1=now(); if(!(reuse&&r==0&&k==0)) lat[p][nl[p]++]=t1-t0;
    }
  }
  for(int p=0;p<np;p++){qsort(lat[p],nl[p],sizeof(double),cmp); double sum=0; for(int i=0;i<nl[p];i++)sum+=lat[p][i];
    printf("port %s: n %d  p10 %.1f  p25 %.1f  median %.1f  p75 %.1f  mean %.1f us  (%.0f/s)\n",argv[4+p],nl[p],lat[p][nl[p]/10],lat[p][nl[p]/4],lat[p][nl[p]/2],lat[p][nl[p]*3/4],sum/nl[p],1e6*nl[p]/sum);}
  return 0;}
