/*
 * sl_auth.h - identity: verifying a connection's JSON Web Token with the
 * keys of --jwt-secret-file / --jwt-public-key-file, and what a verified
 * token says about its bearer (sl_ident_t).
 *
 * Signatures are checked by OpenSSL (EVP: HMAC, RSASSA-PKCS1-v1_5,
 * RSASSA-PSS with RFC 7518's parameters, ECDSA) with keys parsed once when
 * they are loaded; nothing here computes a signature itself.  libjwt is
 * the independent reference the unit tests compare every verdict with.  The algorithm a token names is checked against the key that
 * would verify it before anything else: "none" is refused, HS* needs the
 * secret, RS and PS need the RSA key, ES256/384/512 need an EC key on
 * P-256/384/521 - so an RSA public key can never be used as an HMAC secret
 * (the key-confusion attack).
 *
 * The keys live in this process's memory: the master loads them at start
 * (a bad file stops the server), every worker inherits them by fork and
 * reloads them on SIGHUP; a reload that fails keeps the keys in use.
 */
#ifndef SL_AUTH_H
#define SL_AUTH_H

#include "sl_common.h"

#include <stddef.h>

#define SL_AUTH_TOKEN_MAX 8192 /* bytes; longer tokens are refused unread */
#define SL_AUTH_USER_MAX 128   /* bytes of "sub" */
#define SL_AUTH_INFO_MAX 1024  /* bytes of "info", compact JSON */

typedef enum {
    SL_AUTH_OK = 0,
    SL_AUTH_INVALID_TOKEN,   /* malformed, bad signature, or bad claims */
    SL_AUTH_TOKEN_EXPIRED,   /* exp (+ leeway) has passed */
    SL_AUTH_NOT_YET_VALID,   /* nbf (- leeway) is still to come */
    SL_AUTH_WRONG_AUDIENCE,  /* --jwt-audience not in aud */
    SL_AUTH_WRONG_ISSUER,    /* iss is not --jwt-issuer */
    SL_AUTH_WRONG_ALGORITHM, /* none, unknown, or no key of its type */
    SL_AUTH_TOKEN_TOO_LARGE, /* over SL_AUTH_TOKEN_MAX */
    SL_AUTH_NOT_CONFIGURED,  /* no key at all */
    SL_AUTH__COUNT
} sl_auth_result_t;

/* The reason on the wire ("invalid-token", "token-expired", ...). */
const char *sl_auth_reason(sl_auth_result_t r);

/* The message a peer is sent with reason r: `detail` (sl_auth_verify's,
 * which goes to the log), except where it would tell the server's setup -
 * which key types, curves, audience or issuer it has: a fixed text then. */
const char *sl_auth_peer_message(sl_auth_result_t r, const char *detail);

/* What a verified token grants (malloc'd; sl_ident_free). */
typedef struct sl_ident {
    char *user;       /* "sub": 1..SL_AUTH_USER_MAX bytes, NUL-terminated */
    int64_t exp_ms;   /* "exp" in wall ms; 0: the token does not expire */
    char **channels;  /* "channels": channel ids or "prefix*" patterns */
    uint32_t nchannels;
    char **publish;   /* "publish": the same, for publishing */
    uint32_t npublish;
    char *info;       /* "info" as compact JSON, or NULL */
} sl_ident_t;

void sl_ident_free(sl_ident_t *id);

/* Does `id` match a pattern of the list ("x" exactly, "x*" by prefix,
 * "*" everything)?  A prefix does not reach past a namespace's ':' or a
 * user list's '#' it does not contain itself: "chat*" grants "chat-1" but
 * not "chat:x", "chatops:x" or "chat#bob"; "chat:*" grants "chat:x" but not
 * "chat:x#bob"; "chat:x#*" grants every user-limited "chat:x#..." id. */
bool sl_ident_grants(char *const *patterns, uint32_t n, const char *id, size_t len);

/* Claims checked besides the signature (from the configuration). */
typedef struct {
    const char *audience; /* "" or NULL: aud not checked */
    const char *issuer;   /* "" or NULL: iss not checked */
    int64_t leeway_ms;
} sl_auth_policy_t;

void sl_auth_set_policy(const sl_auth_policy_t *p);

/* Load the key files (either may be NULL or ""): on success they replace
 * the keys in use; on failure nothing changes and err says why. */
int sl_auth_load(const char *secret_file, const char *public_key_file, char *err, size_t errsz);

/* The same, when `expect` (not 0) is the fingerprint the new keys must
 * have - what another process (the master) loaded from the same files: a
 * file changed in between (written in place, not renamed) is refused and
 * the keys in use are kept. */
int sl_auth_reload(const char *secret_file, const char *public_key_file, uint64_t expect,
                   char *err, size_t errsz);

/* A 64-bit fingerprint of the keys in use (the first 8 bytes of SHA-256 over
 * the secret and the public key's DER), 0 when none are loaded. */
uint64_t sl_auth_fingerprint(void);

/* Free the keys in use (tests; the server keeps them for its life). */
void sl_auth_unload(void);

/* Is any key loaded? */
bool sl_auth_enabled(void);

/* Verify token[0..len) at wall time now_ms.  SL_AUTH_OK and *out (the
 * caller owns it), or the reason with a human message in msg. */
sl_auth_result_t sl_auth_verify(const char *token, size_t len, int64_t now_ms, sl_ident_t **out,
                                char *msg, size_t msgsz);

#endif
