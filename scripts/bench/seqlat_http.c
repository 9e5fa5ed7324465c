/* seqlat_http - one sequential plain client: connect, GET /health, the
 * response, close; per-connection latency, servers alternating in chunks
 * (the hand-off hop: tests/bench/ceiling --mode handshake against handoff).
 *   cc -O2 -o build/seqlat-http scripts/bench/seqlat_http.c
 *   build/seqlat-http ROUNDS CHUNK PORT...   (docs/benchmarks.md) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
  int rounds=atoi(argv[1]),chunk=atoi(argv[2]); int np=argc-3; double*lat[16]; int nl[16]={0};
  static const char req[]="GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
  for(int p=0;p<np;p++) lat[p]=malloc(sizeof(double)*rounds*chunk);
  for(int r=0;r<rounds;r++) for(int p=0;p<np;p++){
    struct sockaddr_in a={.sin_family=AF_INET,.sin_port=htons(atoi(argv[3+p]))}; a.sin_addr.s_addr=htonl(0x7f000001);
    for(int k=0;k<chunk;k++){
      double t0=now(); char buf[4096];
      int fd=socket(AF_INET,SOCK_STREAM,0);
      if(connect(fd,(void*)&a,sizeof a)){perror("connect");return 1;}
      if(write(fd,req,sizeof req-1)<0) return 1;
      ssize_t n=read(fd,buf,sizeof buf); if(n<=0){fprintf(stderr,"no response\n");return 1;}
      close(fd);
      lat[p][nl[p]++]=now()-t0;
    }
  }
  for(int p=0;p<np;p++){qsort(lat[p],nl[p],sizeof(double),cmp); double sum=0; for(int i=0;i<nl[p];i++)sum+=lat[p][i];
    printf("port %s: n %d  p10 %.1f  p25 %.1f  median %.1f  p75 %.1f  mean %.1f us\n",argv[3+p],nl[p],lat[p][nl[p]/10],lat[p][nl[p]/4],lat[p][nl[p]/2],lat[p][nl[p]*3/4],sum/nl[p]);}
  return 0;}
