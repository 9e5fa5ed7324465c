/*
 * shm.c - creating the shared mapping and naming its counters.
 *
 * The mapping is anonymous and shared: it exists only while some process of
 * this server maps it, so a crash leaves nothing behind in /dev/shm.  Pages
 * are committed by the kernel on first touch, so a large --shm-size costs
 * only what is used.
 */
#include "sl_shm.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

sl_shm_hdr_t *sl_shm;

static const char *const sl_err_names[SL_ERR__COUNT] = {
    [SL_ERR_INVALID_JSON] = "invalid-json",
    [SL_ERR_INVALID_MESSAGE] = "invalid-message",
    [SL_ERR_PROTOCOL_ERROR] = "protocol-error",
    [SL_ERR_INVALID_UTF8] = "invalid-utf8",
    [SL_ERR_UNSUPPORTED_DATA] = "unsupported-data",
    [SL_ERR_MESSAGE_TOO_BIG] = "message-too-big",
    [SL_ERR_MESSAGE_TIMEOUT] = "message-timeout",
    [SL_ERR_HEARTBEAT_TIMEOUT] = "heartbeat-timeout",
    [SL_ERR_HANDSHAKE_TIMEOUT] = "handshake-timeout",
    [SL_ERR_MAX_CONNECTIONS] = "max-connections",
    [SL_ERR_ORIGIN_REFUSED] = "origin-refused",
    [SL_ERR_BAD_HANDSHAKE] = "bad-handshake",
    [SL_ERR_BAD_HTTP_REQUEST] = "bad-http-request",
    [SL_ERR_NOT_FOUND] = "not-found",
    [SL_ERR_METHOD_NOT_ALLOWED] = "method-not-allowed",
    [SL_ERR_ACCEPT_FAILED] = "accept-failed",
    [SL_ERR_SHM_EXHAUSTED] = "shm-exhausted",
    [SL_ERR_ADMIN_REFUSED] = "admin-refused",
    [SL_ERR_SLOW_CONSUMER] = "slow-consumer",
    [SL_ERR_CONTROL_FLOOD] = "control-flood",
    [SL_ERR_HTTP_CONNECTIONS] = "http-connection-limit",
    [SL_ERR_FD_EXHAUSTED] = "descriptors-exhausted",
};

const char *sl_err_name(sl_err_t e)
{
    return (unsigned)e < SL_ERR__COUNT ? sl_err_names[e] : "unknown";
}

static size_t header_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return (sizeof(sl_shm_hdr_t) + (size_t)page - 1) / (size_t)page * (size_t)page;
}

size_t sl_shm_min_size(void)
{
    return header_size() + (1 << 20); /* and at least 1 MiB for the arena */
}

int sl_shm_create(size_t size, uint32_t nworkers, uint64_t max_conns)
{
    if (size < sl_shm_min_size() || nworkers == 0 || nworkers > SL_MAX_WORKERS) {
        errno = EINVAL;
        return SL_ERROR;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return SL_ERROR;
    sl_shm = p;
    /* Fresh anonymous pages are zero; only the identity needs writing. No
     * other process exists yet, so plain stores suffice. */
    sl_shm->magic = SL_SHM_MAGIC;
    sl_shm->size = size;
    sl_shm->nworkers = nworkers;
    if (sl_reg_init(&sl_shm->reg, (char *)p + header_size(), size - header_size(), max_conns,
                    nworkers) != SL_OK) {
        munmap(p, size);
        sl_shm = NULL;
        errno = EINVAL;
        return SL_ERROR;
    }
    return SL_OK;
}
