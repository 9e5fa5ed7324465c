/*
 * brq.c - the broker's request queue and its results (see sl_brq.h).
 *
 * Both directions are inboxes (inbox.c): a push is recorded, then made by
 * the tail store, under the inbox's robust lock, whose recovery completes
 * or drops a recorded push (a single push commits by itself), so a process
 * killed mid-push leaves a whole entry or none.  The payload object is
 * allocated before the lock is taken and freed again when the queue is
 * full: a producer killed between the two leaks that one object
 * (crash point brq.allocated).
 */
#include "sl_brq.h"
#include "sl_crash.h"

#include <string.h>
#include <urcu/uatomic.h>

const char *sl_brq_reason(uint32_t status)
{
    switch (status) {
    case SL_BR_OK: return "ok";
    case SL_BR_UNAVAILABLE: return "broker-unavailable";
    case SL_BR_NOT_FOUND: return "channel-not-found";
    case SL_BR_FULL: return "max-subscribers-reached";
    case SL_BR_OVERLOADED: return "overloaded";
    case SL_BR_EXISTS: return "channel-exists";
    case SL_BR_NO_SUBSCRIBERS: return "no-subscribers";
    case SL_BR_REQUEST_NOT_FOUND: return "request-not-found";
    case SL_BR_TIMEOUT: return "broker-timeout";
    default: return "internal-error";
    }
}

sl_chan_msg_t *sl_brq_blob(sl_reg_t *r, const void *bytes, size_t len)
{
    sl_chan_msg_t *m = sl_arena_alloc(r->arena, sizeof(*m) + len + 1);
    if (m == NULL)
        return NULL;
    m->refs = 1;
    m->len = (uint32_t)len;
    m->seq = 0;
    m->chan_hash = 0;
    m->idlen = 0;
    m->id[0] = '\0';
    m->payload_off = 0;
    if (len)
        memcpy(m->frame, bytes, len);
    m->frame[len] = '\0'; /* JSON payloads can be parsed in place */
    return m;
}

static int push(sl_reg_t *r, sl_inbox_t *q, sl_inbox_entry_t *e, const void *payload, size_t len)
{
    sl_chan_msg_t *m = NULL;
    if (payload) {
        m = sl_brq_blob(r, payload, len);
        if (m == NULL)
            return SL_CHAN_NO_MEMORY;
    }
    SL_CRASHPOINT("brq.allocated");
    e->msg = m;
    sl_inbox_lock(q);
    if (!sl_inbox_has_room(q, 1)) { /* counted in q->refused */
        sl_inbox_unlock(q);
        if (m)
            sl_arena_free(r->arena, m);
        return SL_CHAN_OVERLOADED;
    }
    if (m) {
        sl_inbox_prepare(q, e, NULL); /* one inbox: committed by its own tail store */
        sl_inbox_push_prepared(q);
    } else {
        sl_inbox_push_bare(q, e); /* nothing to record: one store publishes it */
    }
    sl_inbox_unlock(q);
    return SL_OK;
}

int sl_brq_submit(sl_reg_t *r, sl_inbox_t *q, sl_inbox_entry_t *e, const void *payload,
                  size_t len)
{
    return push(r, q, e, payload, len);
}

int sl_brq_result(sl_reg_t *r, int worker, uint64_t tag, uint32_t status, const void *payload,
                  size_t len)
{
    if (worker < 0 || (uint32_t)worker >= r->nworkers)
        return SL_CHAN_NOT_SUBSCRIBED;
    sl_inbox_entry_t e = {.kind = SL_INBOX_BROKER_RESULT, .tag = tag, .status = status,
                          .from = -1};
    return push(r, r->inboxes[worker], &e, payload, len);
}
