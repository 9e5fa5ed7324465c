/*
 * tickets.c - TLS session-ticket keys in shared memory (sl_tickets.h).
 *
 * Memory ordering: the master writes a slot between two increments of its
 * sequence number (release stores); a reader copies the slot between two
 * acquire loads of the number and keeps the copy only when both are the
 * same even value - a seqlock with one writer, so no lock and nothing to
 * recover.  `current` is published after the slot is complete.
 */
#include "sl_tickets.h"
#include "sl_crash.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <string.h>
#include <urcu/system.h>
#include <urcu/uatomic.h>

int sl_tickets_rotate(sl_tickets_t *t)
{
    sl_ticket_key_t fresh;
    if (RAND_bytes(fresh.name, sizeof(fresh.name)) != 1 ||
        RAND_bytes(fresh.aes, sizeof(fresh.aes)) != 1 ||
        RAND_bytes(fresh.hmac, sizeof(fresh.hmac)) != 1) {
        OPENSSL_cleanse(&fresh, sizeof(fresh));
        return SL_ERROR;
    }
    uint32_t cur = uatomic_read(&t->current);
    /* The spare: neither current nor previous (so no reader wants it). */
    uint32_t spare = t->rotations == 0 ? cur : (cur + 1) % SL_TICKET_SLOTS;
    sl_ticket_key_t *k = &t->key[spare];
    if (SL_MUTATED(M_TICKETS_PUBLISH_FIRST))
        uatomic_set(&t->current, spare);
    uint32_t seq = uatomic_read(&k->seq);
    uatomic_set(&k->seq, seq | 1u); /* odd: being written */
    cmm_smp_wmb();
    SL_CRASHPOINT("tickets.rotate.odd");
    memcpy(k->name, fresh.name, sizeof(k->name));
    SL_CRASHPOINT("tickets.rotate.name");
    memcpy(k->aes, fresh.aes, sizeof(k->aes));
    memcpy(k->hmac, fresh.hmac, sizeof(k->hmac));
    OPENSSL_cleanse(&fresh, sizeof(fresh)); /* no copy of a key on the stack */
    cmm_smp_wmb();
    uatomic_set(&k->seq, (seq | 1u) + 1); /* even: complete */
    SL_CRASHPOINT("tickets.rotate.even");
    cmm_smp_wmb();
    uatomic_set(&t->current, spare); /* the one store that publishes it */
    SL_CRASHPOINT("tickets.rotate.published");
    if (t->rotations > 0) {
        /* The key before the previous one opens no ticket any more: wipe
         * it now rather than a period later (shared memory is in core
         * dumps; an old key decrypts recorded tickets).  Marked odd first,
         * so no reader copies it half wiped; it stays odd (never complete)
         * until the next rotation writes it. */
        sl_ticket_key_t *old = &t->key[(spare + 1) % SL_TICKET_SLOTS];
        uatomic_set(&old->seq, uatomic_read(&old->seq) | 1u);
        cmm_smp_wmb();
        OPENSSL_cleanse(old->name, sizeof(old->name));
        OPENSSL_cleanse(old->aes, sizeof(old->aes));
        OPENSSL_cleanse(old->hmac, sizeof(old->hmac));
    }
    uatomic_set(&t->rotated_ms, sl_now_ms());
    uatomic_set(&t->rotations, t->rotations + 1);
    return SL_OK;
}

/* Copy slot i if it is complete and stays so while copied. */
static bool read_slot(const sl_tickets_t *t, uint32_t i, sl_ticket_key_t *out)
{
    const sl_ticket_key_t *k = &t->key[i];
    for (int tries = 0; tries < 4; tries++) {
        uint32_t s1 = uatomic_read(&k->seq);
        if (s1 & 1u || s1 == 0)
            return false; /* being written, or never written */
        cmm_smp_rmb();
        memcpy(out, k, sizeof(*out));
        cmm_smp_rmb();
        if (uatomic_read(&k->seq) == s1)
            return true;
    }
    return false;
}

int sl_tickets_current(const sl_tickets_t *t, sl_ticket_key_t *out)
{
    if (uatomic_read(&t->rotations) == 0)
        return SL_ERROR;
    return read_slot(t, uatomic_read(&t->current) % SL_TICKET_SLOTS, out) ? SL_OK : SL_ERROR;
}

int sl_tickets_find(const sl_tickets_t *t, const uint8_t name[SL_TICKET_NAME],
                    sl_ticket_key_t *out)
{
    uint32_t cur = uatomic_read(&t->current) % SL_TICKET_SLOTS;
    uint32_t prev = (cur + SL_TICKET_SLOTS - 1) % SL_TICKET_SLOTS;
    if (read_slot(t, cur, out) && memcmp(out->name, name, SL_TICKET_NAME) == 0)
        return 1;
    if (read_slot(t, prev, out) && memcmp(out->name, name, SL_TICKET_NAME) == 0)
        return 2;
    return 0;
}
