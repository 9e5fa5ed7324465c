/*
 * test_tickets.c - TLS session-ticket keys (shm/tickets.c) outside a crash:
 * current and previous findable, and a key that no longer opens tickets
 * wiped at the rotation that retires it (review r16 L6).
 */
#include "sl_test.h"
#include "sl_tickets.h"

#include <stdlib.h>

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static void test_retired_key_wiped(void)
{
    sl_tickets_t *t = calloc(1, sizeof(*t));
    SL_CHECK(t != NULL);
    sl_ticket_key_t first, second, k;
    SL_CHECK_INT(sl_tickets_rotate(t), SL_OK);
    SL_CHECK_INT(sl_tickets_current(t, &first), SL_OK);
    SL_CHECK_INT(sl_tickets_rotate(t), SL_OK);
    SL_CHECK_INT(sl_tickets_current(t, &second), SL_OK);
    SL_CHECK_INT(sl_tickets_find(t, first.name, &k), 2); /* previous */
    for (int round = 0; round < 4; round++) {
        SL_CHECK_INT(sl_tickets_rotate(t), SL_OK);
        SL_CHECK_INT(sl_tickets_find(t, first.name, &k), 0);
        SL_CHECK_INT(sl_tickets_find(t, second.name, &k), round == 0 ? 2 : 0);
        uint32_t c = t->current, p = (c + SL_TICKET_SLOTS - 1) % SL_TICKET_SLOTS;
        for (uint32_t i = 0; i < SL_TICKET_SLOTS; i++) {
            if (i == c || i == p)
                continue;
            const sl_ticket_key_t *o = &t->key[i];
            SL_CHECK(o->seq & 1u); /* never complete: never copied */
            SL_CHECK(all_zero(o->name, sizeof(o->name)) && all_zero(o->aes, sizeof(o->aes)) &&
                     all_zero(o->hmac, sizeof(o->hmac)));
        }
    }
    free(t);
}

int main(void)
{
    SL_TEST_RUN(test_retired_key_wiped);
    return sl_test_summary();
}
