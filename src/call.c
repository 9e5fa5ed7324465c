/*
 * call.c - RPC on a worker: rpc-request, rpc-response, the requester's
 * timers, and cleaning up after a requester that leaves.
 *
 * The correlation lives in the shared registry (sl_rpc.h), so a responder
 * on any worker can answer.  The requester's worker keeps a local record
 * per pending request (sl_call_t): its timer, and its place in the
 * connection's list and in a map by request number.  Exactly one party
 * claims a correlation (sl_rpc_claim); whoever wins removes it:
 *   - a responder: the response travels to the requester's worker as a
 *     DIRECT inbox entry tagged with the request number, which also
 *     cancels the local timer there;
 *   - the timer: the requester gets the rpc-timeout error;
 *   - the requester leaving / its worker dying: nobody is told.
 * A local record is freed when its request is settled on this worker
 * (timeout sent, response delivered, requester gone), never earlier.  The
 * record is what makes the outcome exactly-once for the client: both the
 * response's DIRECT entry and the timer run on this worker, and whichever
 * finds the record first settles it; a late DIRECT entry finds no record
 * and is dropped (sl_call_answered returns false).
 *
 * A requester that closes cancels its pending requests; one a responder
 * holds the claim of is marked abandoned instead, and that responder
 * removes it whether its hand-off works or not (sl_rpc_cancel,
 * sl_rpc_unclaim), so no correlation outlives both sides.
 *
 * The timer does not give up while a responder holds the claim: that
 * responder's DIRECT entry is on its way, or the responder failed to hand
 * it over (it un-claims) or died (the master's cleanup takes the claim over
 * and removes the entry).  So the timer retries every SL_CALL_RETRY_MS
 * until it wins the claim or finds the entry gone; gone twice in a row
 * (the DIRECT entry of a responder that removed it would have arrived in
 * between) means nobody will answer: rpc-timeout.
 */
#include "sl_call.h"
#include "sl_chan.h"
#include "sl_cluster.h"
#include "sl_conf.h"
#include "sl_proto.h"
#include "sl_pubsub.h"
#include "sl_rpc.h"
#include "sl_session.h"
#include "sl_tel.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <urcu/uatomic.h>

#define REG (&sl_shm->reg)
#define SL_RPC_MAX_TIMEOUT_MS 3600000
#define SL_CALL_RETRY_MS 100

struct sl_call {
    struct sl_call *map_next;  /* chain in the map by request number */
    struct sl_call *conn_next; /* the requester's pending list */
    uint64_t no;
    sl_conn_t *conn;
    int64_t deadline; /* wall ms */
    int64_t start_us; /* monotonic us the request was accepted (round-trip histogram) */
    bool gone_once;   /* the timer found the entry gone once already */
    struct event timer;
    char request_id[SL_RPC_ID_MAX];
    char channel_id[129];
};

#define CALL_BUCKETS 1024
static sl_call_t *calls[CALL_BUCKETS];

static sl_call_t **bucket(uint64_t no)
{
    return &calls[no & (CALL_BUCKETS - 1)];
}

/* Forget a local record: map, connection list, timer, memory. */
static void call_free(sl_call_t *k)
{
    for (sl_call_t **p = bucket(k->no); *p; p = &(*p)->map_next)
        if (*p == k) {
            *p = k->map_next;
            break;
        }
    for (sl_call_t **p = &k->conn->calls; *p; p = &(*p)->conn_next)
        if (*p == k) {
            *p = k->conn_next;
            break;
        }
    event_del(&k->timer);
    free(k);
}

/* ------------------------------------------------------------ timeouts */

static void retry_later(sl_call_t *k)
{
    struct timeval tv = {0, SL_CALL_RETRY_MS * 1000};
    evtimer_add(&k->timer, &tv);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_call_t *k = arg;
    int64_t now = sl_now_ms();
    sl_rpc_t *q = sl_rpc_find(REG, k->request_id, strlen(k->request_id));
    if (q && q->no == k->no) {
        if (!sl_rpc_claim(q, SL_RPC_EXPIRED, sl_conns.id)) {
            /* A responder holds the claim: its answer is on the way, or it
             * gives the claim back, or the master takes it over. */
            k->gone_once = false;
            retry_later(k);
            return;
        }
        sl_rpc_remove(REG, q);
    } else if (!k->gone_once) {
        /* Removed: by a responder whose DIRECT entry is already in our
         * inbox (drained at the end of this turn), or by the master after
         * that responder died.  Look once more. */
        k->gone_once = true;
        retry_later(k);
        return;
    }
    uatomic_add(&sl_conns.stats->rpc_expired, 1);
    json_t *e = json_pack("{s:s, s:s, s:s, s:s, s:I}", "type", "error", "reason", "rpc-timeout",
                          "request-id", k->request_id, "message",
                          "no response before the request's timeout", "timestamp",
                          (json_int_t)now);
    sl_proto_reply(k->conn, e);
    SL_TEL(SL_EV_RPC_REQUEST_EXPIRED, SL_INFO, SL_TF_S("request-id", k->request_id),
           SL_TF_S("channel-id", k->channel_id), SL_TF_S("requester", k->conn->conn_id),
           SL_TF_I("late-ms", now - k->deadline));
    call_free(k);
}

static void add_subscriber(const char *conn_id, void *arg)
{
    json_array_append_new(arg, json_string(conn_id));
}

static void delivery_failed(sl_conn_t *c, const char *rid, const char *id, size_t len,
                            const char *reason)
{
    sl_proto_reply(c, json_pack("{s:s, s:s?, s:s%, s:{s:b, s:s}}", "type", "rpc-request-result",
                       "request-id", rid, "channel-id", id, len, "delivery", "success", 0,
                       "reason", reason));
}

/* --------------------------------------------------------- --redis */

/* A request reaches the channel's subscribers on every node through the
 * broker (it counts them across nodes and PUBLISHes); the correlation
 * stays here, so the first response claims it here, as on one node.  The
 * local record and its timer exist before the broker answers, so a
 * response that is quicker than the rpc-request-result finds them (and is
 * sent after that result: sl_proto_send_ordered). */
typedef struct {
    sl_reply_t *reply;
    uint64_t no;
    size_t len;
    char request_id[SL_RPC_ID_MAX];
    char id[SL_CHAN_ID_MAX + 1];
} rpc_wait_t;

static void add_other(const char *conn_id, void *arg)
{
    json_t *a = arg;
    const char *me = json_string_value(json_array_get(a, 0));
    if (strcmp(conn_id, me) != 0)
        json_array_append_new(a, json_string(conn_id));
}

static void cluster_request_done(sl_conn_t *c, void *arg, uint32_t status, json_t *res)
{
    rpc_wait_t *w = arg;
    if (c == NULL) {
        free(w); /* the requester left: sl_call_closed cancelled it */
        return;
    }
    if (status == SL_BR_OK) {
        /* delivered-to counts every node's subscribers; "subscribers"
         * lists this node's (conn-ids of other nodes are not known here). */
        json_t *subs = json_array();
        json_array_append_new(subs, json_string(c->conn_id));
        sl_chan_t *ch = sl_chan_find(REG, w->id, w->len);
        if (ch)
            sl_chan_subscribers(ch, add_other, subs);
        json_array_remove(subs, 0);
        uatomic_add(&sl_conns.stats->rpc_requests, 1);
        sl_proto_complete(c, w->reply,
                          json_pack("{s:s, s:s, s:s%, s:{s:b, s:I, s:o}}", "type",
                                    "rpc-request-result", "request-id", w->request_id,
                                    "channel-id", w->id, w->len, "delivery", "success", 1,
                                    "delivered-to",
                                    json_integer_value(json_object_get(res, "delivered-to")),
                                    "subscribers", subs));
    } else {
        for (sl_call_t *k = *bucket(w->no); k; k = k->map_next)
            if (k->no == w->no) {
                sl_rpc_t *q = sl_rpc_find(REG, k->request_id, strlen(k->request_id));
                if (q && q->no == k->no && sl_rpc_claim(q, SL_RPC_CANCELLED, sl_conns.id))
                    sl_rpc_remove(REG, q);
                call_free(k);
                break;
            }
        if (status != SL_BR_NO_SUBSCRIBERS && status != SL_BR_NOT_FOUND)
            uatomic_add(&sl_conns.stats->overloaded, 1);
        sl_proto_complete(c, w->reply,
                          json_pack("{s:s, s:s, s:s%, s:{s:b, s:s}}", "type", "rpc-request-result",
                                    "request-id", w->request_id, "channel-id", w->id, w->len,
                                    "delivery", "success", 0, "reason", sl_brq_reason(status)));
    }
    free(w);
}

static void cluster_request(sl_conn_t *c, const char *id, size_t len, json_t *data, json_t *tj)
{
    sl_chan_t *ch = sl_chan_find(REG, id, len);
    int64_t timeout = tj ? json_integer_value(tj)
                         : ch ? (int64_t)uatomic_read(&ch->config.rpc_timeout_ms)
                              : sl_conf->rpc_timeout_ms;
    sl_call_t *k = calloc(1, sizeof(*k));
    rpc_wait_t *w = calloc(1, sizeof(*w));
    sl_reply_t *reply = k && w ? sl_proto_defer_chan(c, sl_table_hash(id, len)) : NULL;
    sl_rpc_t *q = reply ? sl_rpc_create(REG, sl_conns.id, c->slot, c->conn_no, id, len, timeout)
                        : NULL;
    if (q == NULL) {
        free(k);
        free(w);
        if (reply)
            sl_proto_complete(c, reply, NULL);
        sl_conns_count_error(SL_ERR_SHM_EXHAUSTED);
        delivery_failed(c, NULL, id, len, "overloaded");
        return;
    }
    json_t *req = json_pack("{s:s, s:s, s:s%, s:O, s:s, s:I, s:I}", "type", "rpc-request",
                            "request-id", q->request_id, "channel-id", id, len, "data", data,
                            "sender-conn-id", c->conn_id, "created-at", (json_int_t)q->created_at,
                            "timeout-ms", (json_int_t)timeout);
    char *frame = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    bool subscribed = sl_pubsub_subscribed(c, id, len);
    json_t *p = frame ? json_pack("{s:s%, s:s, s:b}", "channel-id", id, len, "frame", frame,
                                  "subscribed", subscribed)
                      : NULL;
    char *txt = p ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    free(frame);
    /* The local record first: see above. */
    k->no = q->no;
    k->conn = c;
    k->deadline = q->deadline;
    k->start_us = sl_mono_us();
    memcpy(k->request_id, q->request_id, sizeof(k->request_id));
    memcpy(k->channel_id, id, len);
    evtimer_assign(&k->timer, sl_conns.base, timer_cb, k);
    struct timeval tv = {timeout / 1000, (timeout % 1000) * 1000};
    evtimer_add(&k->timer, &tv);
    k->map_next = *bucket(k->no);
    *bucket(k->no) = k;
    k->conn_next = c->calls;
    c->calls = k;
    w->reply = reply;
    w->no = q->no;
    w->len = len;
    memcpy(w->request_id, q->request_id, sizeof(w->request_id));
    memcpy(w->id, id, len);
    int rc = txt ? sl_cluster_submit(SL_BRQ_RPC, c, 0, txt, strlen(txt), cluster_request_done, w)
                 : SL_BR_OVERLOADED;
    free(txt);
    if (rc != SL_OK)
        cluster_request_done(c, w, (uint32_t)rc, NULL);
}

/* Requests of other nodes delivered to subscribers here: request-id ->
 * channel, so that a response to one is checked like a local one.  A
 * small table by hash (a newer request takes an older one's place); a
 * request it forgot is answered request-not-found. */
#define REMOTE_SLOTS 4096
static struct {
    char rid[SL_RPC_ID_MAX];
    char chan[SL_CHAN_ID_MAX + 1];
} remote[REMOTE_SLOTS];

static const char RPC_PREFIX[] = "{\"type\":\"rpc-request\",\"request-id\":\"";

void sl_call_remote_seen(const char *json, size_t len, const char *chan, size_t chan_len)
{
    size_t pl = sizeof(RPC_PREFIX) - 1;
    if (len <= pl || memcmp(json, RPC_PREFIX, pl) != 0 || chan_len > SL_CHAN_ID_MAX)
        return;
    const char *rid = json + pl, *q = memchr(rid, '"', len - pl);
    size_t rlen = q ? (size_t)(q - rid) : 0;
    if (rlen == 0 || rlen >= SL_RPC_ID_MAX)
        return;
    uint32_t i = (uint32_t)sl_table_hash(rid, rlen) & (REMOTE_SLOTS - 1);
    memcpy(remote[i].rid, rid, rlen);
    remote[i].rid[rlen] = '\0';
    memcpy(remote[i].chan, chan, chan_len);
    remote[i].chan[chan_len] = '\0';
}

static const char *remote_channel(const char *rid, size_t rlen)
{
    if (rlen >= SL_RPC_ID_MAX)
        return NULL;
    uint32_t i = (uint32_t)sl_table_hash(rid, rlen) & (REMOTE_SLOTS - 1);
    if (strlen(remote[i].rid) != rlen || memcmp(remote[i].rid, rid, rlen) != 0)
        return NULL;
    return remote[i].chan;
}

typedef struct {
    sl_reply_t *reply;
    size_t rlen;
    char rid[];
} resp_wait_t;

static void response_failed(sl_conn_t *c, const char *rid, size_t rlen, const char *reason);

static void cluster_response_done(sl_conn_t *c, void *arg, uint32_t status, json_t *res)
{
    resp_wait_t *w = arg;
    if (c) {
        if (status == SL_BR_OK) {
            uatomic_add(&sl_conns.stats->rpc_responses, 1);
            sl_proto_complete(c, w->reply,
                              json_pack("{s:s, s:s%, s:b}", "type", "rpc-response-result",
                                        "request-id", w->rid, w->rlen, "success", 1));
        } else {
            sl_proto_complete(c, w->reply,
                              json_pack("{s:s, s:s%, s:b, s:s}", "type", "rpc-response-result",
                                        "request-id", w->rid, w->rlen, "success", 0, "reason",
                                        sl_brq_reason(status)));
        }
    }
    free(w);
}

/* A response to a request made on another node: forwarded there, where
 * the first one claims it; the outcome comes back. */
static void cluster_response(sl_conn_t *c, const char *rid, size_t rlen, const char *node,
                             json_t *data, json_t *errj)
{
    resp_wait_t *w = malloc(sizeof(*w) + rlen + 1);
    sl_reply_t *reply = w ? sl_proto_defer(c) : NULL;
    if (reply == NULL) {
        free(w);
        response_failed(c, rid, rlen, "overloaded");
        return;
    }
    w->reply = reply;
    w->rlen = rlen;
    memcpy(w->rid, rid, rlen);
    w->rid[rlen] = '\0';
    json_t *resp = json_pack("{s:s, s:s%, s:O, s:b, s:s}", "type", "rpc-response", "request-id",
                             rid, rlen, "data", data, "error", json_is_true(errj),
                             "responder-conn-id", c->conn_id);
    char *frame = resp ? json_dumps(resp, JSON_COMPACT) : NULL;
    json_decref(resp);
    json_t *p = frame ? json_pack("{s:s, s:s, s:s%, s:s}", "op", "rpc-response", "node", node,
                                  "request-id", rid, rlen, "frame", frame)
                      : NULL;
    char *txt = p ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    free(frame);
    int rc = txt ? sl_cluster_submit(SL_BRQ_RPC_RESPONSE, c, 0, txt, strlen(txt),
                                     cluster_response_done, w)
                 : SL_BR_OVERLOADED;
    free(txt);
    if (rc != SL_OK)
        cluster_response_done(c, w, (uint32_t)rc, NULL);
}

/* ----------------------------------------------------------- requests */

void sl_call_request(sl_conn_t *c, json_t *msg)
{
    json_t *idj = json_object_get(msg, "channel-id"), *data = json_object_get(msg, "data"),
           *tj = json_object_get(msg, "timeout-ms");
    if (!json_is_string(idj)) {
        sl_proto_bad_field(c, "rpc-request", "channel-id", idj ? "must be a string" : "is missing");
        return;
    }
    if (!json_is_object(data)) {
        sl_proto_bad_field(c, "rpc-request", "data", data ? "must be an object" : "is missing");
        return;
    }
    if (tj && !(json_is_integer(tj) && json_integer_value(tj) >= 1 &&
                json_integer_value(tj) <= SL_RPC_MAX_TIMEOUT_MS)) {
        sl_proto_bad_field(c, "rpc-request", "timeout-ms", "must be an integer from 1 to 3600000");
        return;
    }
    const char *id = json_string_value(idj);
    size_t len = json_string_length(idj);
    if (!sl_chan_id_valid(id, len)) {
        delivery_failed(c, NULL, id, len, "invalid-channel-id");
        return;
    }
    const char *why = sl_session_permit(c, SL_ACT_RPC, id, len, sl_pubsub_subscribed(c, id, len));
    if (why) {
        delivery_failed(c, NULL, id, len, why);
        return;
    }
    if (sl_cluster) {
        cluster_request(c, id, len, data, tj);
        return;
    }
    sl_chan_t *ch = sl_chan_find(REG, id, len);
    if (ch == NULL) {
        delivery_failed(c, NULL, id, len, "channel-not-found");
        return;
    }
    int64_t timeout = tj ? json_integer_value(tj) : ch->config.rpc_timeout_ms;
    sl_call_t *k = calloc(1, sizeof(*k));
    sl_rpc_t *q = k ? sl_rpc_create(REG, sl_conns.id, c->slot, c->conn_no, id, len, timeout) : NULL;
    if (q == NULL) {
        free(k);
        sl_conns_count_error(SL_ERR_SHM_EXHAUSTED);
        delivery_failed(c, NULL, id, len, "overloaded");
        return;
    }
    json_t *req = json_pack("{s:s, s:s, s:s%, s:O, s:s, s:I, s:I}", "type", "rpc-request",
                            "request-id", q->request_id, "channel-id", id, len, "data", data,
                            "sender-conn-id", c->conn_id, "created-at", (json_int_t)q->created_at,
                            "timeout-ms", (json_int_t)timeout);
    sl_buf_t *frame = req ? sl_frame_json(req) : NULL;
    json_decref(req);
    json_t *subs = json_array();
    uint32_t n = 0;
    uint64_t woken = 0;
    int rc = frame ? sl_chan_send(REG, ch, frame->data + frame->start, frame->len - frame->start,
                                  c->conn_id, c->conn_no, add_subscriber, subs, &n, &woken)
                   : SL_CHAN_NO_MEMORY;
    sl_buf_unref(frame);
    if (rc != SL_OK || n == 0) {
        /* Nothing handed over: nothing is tracked. */
        if (sl_rpc_claim(q, SL_RPC_CANCELLED, sl_conns.id))
            sl_rpc_remove(REG, q);
        free(k);
        json_decref(subs);
        if (rc != SL_OK)
            uatomic_add(&sl_conns.stats->overloaded, 1);
        delivery_failed(c, q->request_id, id, len, rc != SL_OK ? "overloaded" : "no-subscribers");
        return;
    }
    sl_pubsub_wake_later(woken);
    k->no = q->no;
    k->start_us = sl_mono_us();
    k->conn = c;
    k->deadline = q->deadline;
    memcpy(k->request_id, q->request_id, sizeof(k->request_id));
    memcpy(k->channel_id, id, len);
    evtimer_assign(&k->timer, sl_conns.base, timer_cb, k);
    struct timeval tv = {timeout / 1000, (timeout % 1000) * 1000};
    evtimer_add(&k->timer, &tv);
    k->map_next = *bucket(k->no);
    *bucket(k->no) = k;
    k->conn_next = c->calls;
    c->calls = k;
    uatomic_add(&sl_conns.stats->rpc_requests, 1);
    SL_TEL(SL_EV_RPC_REQUEST_SENT, SL_DEBUG, SL_TF_S("request-id", k->request_id),
           SL_TF_SN("channel-id", id, len), SL_TF_S("requester", c->conn_id),
           SL_TF_I("delivered-to", n), SL_TF_I("timeout-ms", timeout));
    sl_proto_reply(c, json_pack("{s:s, s:s, s:s%, s:{s:b, s:I, s:o}}", "type", "rpc-request-result",
                       "request-id", k->request_id, "channel-id", id, len, "delivery", "success", 1,
                       "delivered-to", (json_int_t)n, "subscribers", subs));
}

/* ---------------------------------------------------------- responses */

static void response_failed(sl_conn_t *c, const char *rid, size_t rlen, const char *reason)
{
    sl_proto_reply(c, json_pack("{s:s, s:s%, s:b, s:s}", "type", "rpc-response-result", "request-id", rid,
                       rlen, "success", 0, "reason", reason));
}

void sl_call_response(sl_conn_t *c, json_t *msg)
{
    json_t *ridj = json_object_get(msg, "request-id"), *data = json_object_get(msg, "data"),
           *errj = json_object_get(msg, "error");
    if (!json_is_string(ridj)) {
        sl_proto_bad_field(c, "rpc-response", "request-id", ridj ? "must be a string" : "is missing");
        return;
    }
    if (data == NULL) {
        sl_proto_bad_field(c, "rpc-response", "data", "is missing");
        return;
    }
    if (errj && !json_is_boolean(errj)) {
        sl_proto_bad_field(c, "rpc-response", "error", "must be a boolean");
        return;
    }
    const char *rid = json_string_value(ridj);
    size_t rlen = json_string_length(ridj);
    const char *node = sl_cluster ? sl_cluster_remote_node(rid, rlen) : NULL;
    if (node) {
        /* As for a local request: only a subscriber of its channel may
         * answer it (the channel is known from its delivery here). */
        const char *chan = remote_channel(rid, rlen);
        if (chan == NULL) {
            response_failed(c, rid, rlen, "request-not-found");
            return;
        }
        size_t cl = strlen(chan);
        const char *why = sl_session_permit(c, SL_ACT_RPC_RESPONSE, chan, cl,
                                            sl_pubsub_subscribed(c, chan, cl));
        if (why) {
            response_failed(c, rid, rlen, why);
            return;
        }
        cluster_response(c, rid, rlen, node, data, errj);
        return;
    }
    sl_rpc_t *q = sl_rpc_find(REG, rid, rlen);
    if (q == NULL) {
        response_failed(c, rid, rlen, "request-not-found");
        return;
    }
    /* Only a subscriber of the request's channel may answer it. */
    size_t qlen = strlen(q->channel_id);
    const char *why = sl_session_permit(c, SL_ACT_RPC_RESPONSE, q->channel_id, qlen,
                                        sl_pubsub_subscribed(c, q->channel_id, qlen));
    if (why) {
        response_failed(c, rid, rlen, why);
        return;
    }
    if (!sl_rpc_claim(q, SL_RPC_ANSWERED, sl_conns.id)) {
        /* Late or duplicate. */
        response_failed(c, rid, rlen, "request-not-found");
        return;
    }
    json_t *resp = json_pack("{s:s, s:s%, s:O, s:b, s:s}", "type", "rpc-response", "request-id",
                             rid, rlen, "data", data, "error", json_is_true(errj),
                             "responder-conn-id", c->conn_id);
    sl_buf_t *frame = resp ? sl_frame_json(resp) : NULL;
    json_decref(resp);
    int rc = frame ? sl_chan_send_direct(REG, q->worker, q->slot, q->conn_no, q->no,
                                         frame->data + frame->start, frame->len - frame->start)
                   : SL_CHAN_NO_MEMORY;
    sl_buf_unref(frame);
    if (rc != SL_OK) {
        /* The requester's inbox is full: the request stays pending (its
         * timer still runs) and this responder is told - unless the
         * requester went meanwhile: then un-claiming removes the entry. */
        bool pending = sl_rpc_unclaim(REG, q);
        uatomic_add(&sl_conns.stats->overloaded, 1);
        response_failed(c, rid, rlen, pending ? "overloaded" : "request-not-found");
        return;
    }
    sl_pubsub_wake_later((uint64_t)1 << q->worker);
    sl_rpc_remove(REG, q);
    uatomic_add(&sl_conns.stats->rpc_responses, 1);
    SL_TEL(SL_EV_RPC_RESPONSE_SENT, SL_DEBUG, SL_TF_SN("request-id", rid, rlen),
           SL_TF_S("responder", c->conn_id), SL_TF_B("error", json_is_true(errj)));
    sl_proto_reply(c, json_pack("{s:s, s:s%, s:b}", "type", "rpc-response-result", "request-id", rid, rlen,
                       "success", 1));
}

/* A DIRECT inbox entry tagged with request number `no` arrived here: if
 * the request is still unsettled, the response settles it (true: deliver
 * it); otherwise the client already had its rpc-timeout (false: drop). */
bool sl_call_answered(uint64_t no)
{
    for (sl_call_t *k = *bucket(no); k; k = k->map_next)
        if (k->no == no) {
            sl_hist_observe(&sl_conns.stats->rpc, sl_mono_us() - k->start_us, 1);
            call_free(k);
            return true;
        }
    return false;
}

void sl_call_closed(sl_conn_t *c)
{
    size_t n = 0;
    while (c->calls) {
        sl_call_t *k = c->calls;
        sl_rpc_t *q = sl_rpc_find(REG, k->request_id, strlen(k->request_id));
        /* Cancelled, or left to the responder that holds the claim (it
         * removes the entry whatever becomes of its response). */
        if (q && q->no == k->no && sl_rpc_cancel(REG, q, sl_conns.id))
            n++;
        call_free(k);
    }
    if (n)
        SL_TEL(SL_EV_RPC_CLEANUP_COMPLETED, SL_INFO, SL_TF_S("conn-id", c->conn_id),
               SL_TF_I("cancelled", n), SL_TF_S("reason", "requester closed"));
}
