/*
 * sl_tickets.h - TLS session-ticket keys in shared memory, so that a client
 * resumes its TLS session on whichever worker its next connection lands.
 *
 * Three slots: the current key (new tickets are sealed with it), the
 * previous one (tickets sealed with it are still accepted, and renewed),
 * and a spare the master fills at the next rotation.  One writer, the
 * master; readers are the workers' handshakes.
 *
 * Crash consistency (shm/README.md, "TLS session-ticket keys"): a rotation
 * writes the spare slot under its sequence number (odd while it is being
 * written: readers skip such a slot), makes it even, and only then
 * publishes it as current with one store.  Killed at any instant, the
 * store is in a state readers handle: the slot being written is neither
 * current nor previous, and an odd slot is never used.  The next rotation
 * (sl_tickets_rotate) simply writes that slot again: nothing to recover.
 */
#ifndef SL_TICKETS_H
#define SL_TICKETS_H

#include "sl_common.h"

#define SL_TICKET_SLOTS 3
#define SL_TICKET_NAME 16

typedef struct {
    uint32_t seq; /* odd: being written (skip) */
    uint8_t name[SL_TICKET_NAME];
    uint8_t aes[32];  /* AES-256-CBC */
    uint8_t hmac[32]; /* HMAC-SHA256 */
} sl_ticket_key_t;

typedef struct {
    uint32_t current;    /* slot of the key new tickets are sealed with */
    uint32_t rotations;  /* keys made so far (0: none yet) */
    int64_t rotated_ms;  /* wall ms of the last rotation */
    sl_ticket_key_t key[SL_TICKET_SLOTS];
} sl_tickets_t;

/* Master only: a new random key becomes current; the one before becomes
 * previous (still accepted).  SL_OK, or SL_ERROR when no random bytes
 * could be had (the keys in place stay). */
int sl_tickets_rotate(sl_tickets_t *t);

/* The current key (copied out, consistently): SL_OK, or SL_ERROR when
 * there is none. */
int sl_tickets_current(const sl_tickets_t *t, sl_ticket_key_t *out);

/* The key named `name` among the current and the previous one: 1 found
 * (current), 2 found (previous: the ticket should be renewed), 0 unknown. */
int sl_tickets_find(const sl_tickets_t *t, const uint8_t name[SL_TICKET_NAME],
                    sl_ticket_key_t *out);

#endif
