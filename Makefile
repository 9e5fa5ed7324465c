# sente-lite build.
#
#   make              build ./sente-lite (in build/, linked at top level)
#   make check        every test: unit + integration + web (Node and headless
#                     Chromium), then all again under ASan/UBSan (this is
#                     what CI runs through scripts/test.sh)
#   make check-fast   unit + integration + cluster + web on the normal build only
#   make check-asan   unit + integration + web on the ASan/UBSan build only
#   make bench-shm    shared-memory table benchmark (figures, not a test)
#   make bench-tel    telemetry cost benchmark (figures, not a test)
#   make bench-auth   µs per token verification, ours and libjwt's (figures)
#   make bench-cleanup  the master's accept latency while it cleans up after a
#                     killed worker with 100,000 subscriptions (figures)
#   make bench-presence presence latency at 1,000 and 10,000 subscribers; a
#                     join storm vs the same fan-out as publications (figures)
#   make bench-presync the sliced presence rewrite's walk of a big channel,
#                     from the list head vs resumed (figures)
#   make mutation-check  build each mutant of the registry (sl_crash.h) and
#                     show a test fails for every one (about 3 minutes)
#   make bench        comparison with nchan and Node's ws (docs/benchmarks.md)
#   make bench-quick  a two-minute version of it
#   make bench-cluster  the --redis cluster against nchan with Redis
#   make bench-profile  the connection path in instructions per connection
#                     (callgrind; scripts/bench/profile-connect.sh)
#   make bench-hostile a well-behaved client's echo round trips alone and
#                     beside 200 hostile connections (figures, not a test)
#   make fuzz         run each libFuzzer target (tests/fuzz/) FUZZ_SECONDS
#                     seconds (clang; scripts/deps.sh --fuzz installs it)
#   make check-fuzz   replay the committed fuzz corpora (gcc, part of check)
#   make check-autobahn  RFC 6455 conformance: Autobahn|Testsuite 1-10 and a slice
#                     of permessage-deflate (12, 13), over ws:// and wss:// (part of check)
#   make check-autobahn-full  all of 12.* and 13.* over ws:// and wss:// (~45 min)
#   make install      binary, man page, systemd units, example config, logrotate
#                     snippet, health-check.sh and docs under $(DESTDIR)$(PREFIX)
#                     (/etc for the config, defaults and logrotate files, never
#                     overwriting ones that exist)
#   make uninstall    remove what install installed (config files only when
#                     unchanged)
#   make deb          the Debian package (dpkg-buildpackage -us -uc -b in a copy
#                     of the tree under build/deb/; the .deb lands there)
#   make clean
#
# SAN=1 selects the sanitizer build (objects in build-asan/).  Packagers'
# CFLAGS, CPPFLAGS and LDFLAGS are honoured (`make CFLAGS=-O2` works): what
# the build itself needs is added with `override ... +=`.

CC       ?= cc
PREFIX   ?= /usr/local
DESTDIR  ?=
SYSCONFDIR ?= /etc
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR   ?= $(PREFIX)/share/doc/sente-lite
VERSION  := $(shell sed -n 's/^\#define SL_VERSION "\(.*\)"/\1/p' include/sl_common.h)
PKGS     := libevent jansson liburcu libssl libcrypto zlib
# libjwt: only the tests and bench-auth link it (the independent reference
# token verification is compared with); the server does not.
TEST_PKGS := libjwt
PY       ?= /usr/bin/python3

ifneq ($(MUTANT),)
# tests/mutation-check.sh: one build per mutant (sl_crash.h, SL_MUTATED).
BUILD    := build-mutant-$(MUTANT)
SANFLAGS := -DSL_MUTANT=$(MUTANT)
OPT      := -O2
else ifeq ($(FUZZ),1)
# libFuzzer build (make fuzz): clang, every object instrumented for coverage.
CC       := clang
BUILD    := build-fuzz
SANFLAGS := -fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined
OPT      := -O1
else ifeq ($(SAN),1)
BUILD    := build-asan
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      := -O1
else
BUILD    := build
SANFLAGS :=
OPT      := -O2
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
TEST_CFLAGS := $(shell pkg-config --cflags $(TEST_PKGS) 2>/dev/null)
TEST_LIBS  := $(shell pkg-config --libs $(TEST_PKGS) 2>/dev/null)
# hiredis (the broker's Redis client): headers as <hiredis/...>, so only its
# libraries are taken from pkg-config (its -I would put read.h, sds.h ... on
# the include path).
PKG_LIBS   += $(shell pkg-config --libs hiredis 2>/dev/null || echo -lhiredis)

CFLAGS   ?= $(OPT) -g
override CFLAGS += -std=c11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
            -Wmissing-prototypes -Wno-unused-parameter $(SANFLAGS)
override CPPFLAGS += -D_GNU_SOURCE -Iinclude $(PKG_CFLAGS)
override LDFLAGS += $(SANFLAGS)
override LDLIBS += $(PKG_LIBS) -lpthread

LIB_SRC  := $(filter-out src/main.c,$(wildcard src/*.c)) $(wildcard shm/*.c)
LIB_OBJ  := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRC))
MAIN_OBJ := $(BUILD)/obj/src/main.o
LIB      := $(BUILD)/libsente.a
BIN      := $(BUILD)/sente-lite

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

# The kill-point tests link the library built with -DSL_CRASHPOINTS (named
# crash points compiled in; sl_crash.h), in the same flavour as $(BUILD).
CRASH_OBJ := $(patsubst %.c,$(BUILD)/crash/%.o,$(LIB_SRC))
CRASH_LIB := $(BUILD)/libsente-crash.a
CRASH_TESTS := $(BUILD)/tests/test_killpoints $(BUILD)/tests/test_access

.PHONY: all check check-fast check-asan check-bins check-unit check-integration install uninstall deb clean \
        check-autobahn-full format bench-shm bench-tel bench bench-quick bench-auth bench-cleanup \
        bench-presence bench-presync bench-profile mutation-check bench-cluster check-cluster bench-hostile

all: $(BIN) sente-lite

sente-lite: $(BIN)
ifneq ($(SAN),1)
	ln -sf $(BIN) sente-lite
endif

$(BIN): $(MAIN_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(LIB): $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/obj/%.o: %.c $(wildcard include/*.h) $(wildcard shm/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(LIB) $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(TEST_CFLAGS) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) \
	    $(TEST_LIBS)

$(BUILD)/crash/%.o: %.c $(wildcard include/*.h) $(wildcard shm/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -DSL_CRASHPOINTS -c -o $@ $<

$(CRASH_LIB): $(CRASH_OBJ)
	rm -f $@
	ar rcs $@ $^

$(CRASH_TESTS): $(BUILD)/tests/%: tests/unit/%.c $(CRASH_LIB) $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -DSL_CRASHPOINTS -Itests/unit $(LDFLAGS) -o $@ $< $(CRASH_LIB) $(LDLIBS)

# The server with crash, stop and fault points compiled in (sl_crash.h), for
# the integration tests that stop a worker inside a lock or fail a local
# allocation: SL_CRASH_ARM=<worker>:<point>:<nth>:<exit|stop|fail>.
CRASH_BIN := $(BUILD)/sente-lite-crash

$(CRASH_BIN): $(BUILD)/crash/src/main.o $(CRASH_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: tests/bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(TEST_CFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS) $(TEST_LIBS)

# Shared-memory lookups/s: RCU table vs a process-shared rwlock table.
bench-shm: $(BUILD)/bench/bench_shm
	$(BUILD)/bench/bench_shm

# The master's accept latency while it cleans up after a killed worker that
# held 100,000 subscriptions (tests/bench/cleanup.py; figures, not a test).
bench-cleanup: $(BIN)
	$(PY) tests/bench/cleanup.py --bin $(abspath $(BIN))

# The sliced presence rewrite's registry walk for one channel of 10,000 and
# 50,000 subscriptions: slices from the list head vs resumed (review rs 6;
# scripts/bench/presync.sh; figures, not a test).
bench-presync: $(BUILD)/bench/bench_presync
	nice -n 10 $(BUILD)/bench/bench_presync

# Presence latency at 1,000 and 10,000 subscribers, and a join storm against
# the same fan-out as publications (tests/bench/presence.py; figures, medians
# of three runs).
bench-presence: $(BIN)
	nice -n 10 $(PY) tests/bench/presence.py --bin $(abspath $(BIN))

# Each mutant of sl_crash.h built on its own and run against the unit tests:
# every one must make a test fail (tests/mutation-check.sh).
mutation-check:
	tests/mutation-check.sh

# The connection path in instructions (callgrind; timings on this shared
# machine are noise): 2,000 connections each subscribing, per connection,
# per process and function (scripts/bench/profile-connect.sh).
bench-profile: $(BIN) $(BUILD)/sente-bench
	scripts/deps.sh --bench
	scripts/bench/profile-connect.sh 2000 $(BUILD)/bench/profile

# Telemetry: ns per emitted event in a worker, events/s through the logger.
bench-tel: $(BUILD)/bench/bench_tel
	$(BUILD)/bench/bench_tel

# Tokens: µs per verification (HS256, RS256, ES256, PS256), and libjwt's
# jwt_decode on the same tokens for comparison.
bench-auth: $(BUILD)/bench/bench_auth
	$(BUILD)/bench/bench_auth

# Side by side with nchan and a Node.js ws server (docs/benchmarks.md):
# installs the peers, runs every scenario three times alternating the
# servers, prints the table of medians, writes build/bench/results.json,
# build/bench/table.md and build/bench/chart.png.  About 10 minutes.
bench: $(BIN) $(BUILD)/sente-bench $(BUILD)/bench/bench_tel $(BUILD)/bench/bench_auth
	scripts/deps.sh --bench
	scripts/bench/peers-install.sh
	$(BUILD)/bench/bench_tel | tee $(BUILD)/bench/telemetry.txt
	$(BUILD)/bench/bench_auth | tee $(BUILD)/bench/auth.txt
	$(PY) scripts/bench/bench.py --big 50000 --out $(BUILD)/bench/results.json
	$(PY) scripts/bench/report.py $(BUILD)/bench/results.json $(BUILD)/bench/table.md \
	    $(BUILD)/bench/chart.png

# Cluster: sente-lite nodes over Redis against nchan with Redis, publish
# round trips with and without Redis, what one Redis carries, and the
# single-node fan-out of this build against the previous one (main's tree,
# built in build/bench/previous).  About 3 minutes.
PREVIOUS ?= main
bench-cluster: $(BIN) $(BUILD)/sente-bench
	scripts/deps.sh --test --bench
	scripts/bench/peers-install.sh
	rm -rf $(BUILD)/bench/previous && mkdir -p $(BUILD)/bench/previous
	git archive $(PREVIOUS) | tar -x -C $(BUILD)/bench/previous
	$(MAKE) -C $(BUILD)/bench/previous build/sente-lite
	$(PY) scripts/bench/cluster.py --previous $(BUILD)/bench/previous/build/sente-lite \
	    --out $(BUILD)/bench/cluster.json
bench: bench-cluster

# Issue 16's rows alone (also part of `make bench`): sente-lite and nginx +
# nchan over wss with the same throw-away certificates (handshakes/s with
# ECDSA and RSA, full and resumed, through sente-bench and openssl s_time;
# fan-out at 1,000 subscribers flat out and at 20/s; idle PSS per wss
# connection) and sente-lite's permessage-deflate against none on a 2 KiB
# JSON document.  About 5 minutes; figures in docs/benchmarks.md.
BENCH_TLS_ROWS := wss-connect-ec,wss-connect-ec-resumed,wss-connect-rsa,wss-connect-rsa-resumed,wss-fanout-1k,wss-fanout-1k-20/s,wss-idle-2k,json2k-fanout-1k-plain,json2k-fanout-1k-deflate,s_time
.PHONY: bench-tls
bench-tls: $(BIN) $(BUILD)/sente-bench
	scripts/deps.sh --bench
	scripts/bench/peers-install.sh
	$(PY) scripts/bench/bench.py --only sente-lite,nchan --no-access \
	    --scenarios '$(BENCH_TLS_ROWS)' --out $(BUILD)/bench/tls.json
	$(PY) scripts/bench/report.py $(BUILD)/bench/tls.json $(BUILD)/bench/tls.md \
	    $(BUILD)/bench/tls.png

# A well-behaved client's echo round trips/s and p99 alone and beside 200
# hostile connections, alternating in the same run (scripts/bench/hostile.py).
bench-hostile: $(BIN) $(BUILD)/sente-bench $(BUILD)/bench/hostile_gen
	$(PY) scripts/bench/hostile.py --bin $(BIN) --bench $(BUILD)/sente-bench \
	    --generator $(BUILD)/bench/hostile_gen --out $(BUILD)/bench/hostile.json

# The hostile side of bench-hostile: libc only, one epoll loop.
$(BUILD)/bench/hostile_gen: tests/bench/hostile_gen.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $<

# The same scenarios once, shorter, smaller (under two minutes).
bench-quick: $(BIN) $(BUILD)/sente-bench
	scripts/deps.sh --bench
	scripts/bench/peers-install.sh
	$(PY) scripts/bench/bench.py --quick --out $(BUILD)/bench/results-quick.json

check-unit: $(UNIT_BIN)
	tests/run-unit.sh $(UNIT_BIN)

# Two pytest-xdist processes (PYTEST_JOBS; the machine has 2 cores; tests/integration/
# conftest.py gives each its own share of free ports), then the tests marked
# "alone" (a bound on time under their own load) by themselves.  Each run
# prints its own "N passed ... in Xs" line; scripts/test.sh adds them up.
PYTEST_JOBS ?= 2
# --dist loadscope: a module's tests stay in one process, in order (module-
# scoped servers; test_malformed_http's last test counts what the others sent).
PYTEST_PAR = -n $(PYTEST_JOBS) --dist loadscope -m "not alone"
PYTEST_ALONE = -m alone
check-integration: $(BIN) $(CRASH_BIN)
	SENTE_LITE_BIN=$(abspath $(BIN)) $(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_PAR) tests/integration; \
	rc=$$?; SENTE_LITE_BIN=$(abspath $(BIN)) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ALONE) tests/integration || rc=1; exit $$rc

# Nodes joined through a real redis-server (Debian's; tests/cluster/conftest.py
# starts one per test on a free loopback port).  SENTE_TEST_REDIS_URL runs
# them against an external Redis instead.
check-cluster: $(BIN) $(CRASH_BIN)
	SENTE_LITE_BIN=$(abspath $(BIN)) $(PY) -m pytest -q -p no:cacheprovider --durations=10 $(PYTEST_PAR) tests/cluster; \
	rc=$$?; SENTE_LITE_BIN=$(abspath $(BIN)) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ALONE) tests/cluster || rc=1; exit $$rc

# Unit and integration runs one after the other: both start processes and
# time things, and running them side by side would only add noise.
# Each phase is timed (scripts/phase.sh prints "phase NAME: N s").
check-fast:
	scripts/phase.sh unit $(MAKE) check-unit
	scripts/phase.sh fuzz $(MAKE) check-fuzz
	scripts/phase.sh integration $(MAKE) check-integration
	scripts/phase.sh cluster $(MAKE) check-cluster
	scripts/phase.sh autobahn $(MAKE) check-autobahn
	scripts/phase.sh web $(MAKE) check-web

check-asan:
	scripts/phase.sh asan-unit $(MAKE) SAN=1 check-unit
	scripts/phase.sh asan-fuzz $(MAKE) SAN=1 check-fuzz
	scripts/phase.sh asan-integration $(MAKE) SAN=1 check-integration
	scripts/phase.sh asan-cluster $(MAKE) SAN=1 check-cluster
	scripts/phase.sh asan-autobahn $(MAKE) SAN=1 check-autobahn
	scripts/phase.sh asan-web $(MAKE) SAN=1 check-web

# Every binary the check-* phases run (more below, after their rules).
check-bins: $(UNIT_BIN) $(BIN) $(CRASH_BIN)

# The normal build first, then the sanitizer build in the background, at
# nice 19, while the normal phases run: they mostly wait (about half a core
# used), and a nice-19 compile only takes the CPU they leave (a woken test
# process preempts it at once), so the phases see no more load than before.
# The sanitizer phases start once both are done; its log is
# build-asan/check-bins.log, shown when it failed.
check:
	scripts/phase.sh build $(MAKE) check-bins
	@mkdir -p build-asan; \
	nice -n 19 scripts/phase.sh asan-build-beside $(MAKE) SAN=1 check-bins \
	    > build-asan/check-bins.log 2>&1 & pid=$$!; \
	$(MAKE) check-fast; rc=$$?; \
	wait $$pid; brc=$$?; grep '^phase ' build-asan/check-bins.log; \
	if [ $$brc -ne 0 ]; then echo "the sanitizer build failed:"; tail -n 40 build-asan/check-bins.log; fi; \
	[ $$rc -eq 0 ] && $(MAKE) check-asan

# Files under /etc are installed only when absent: an operator's edits are
# never overwritten (the Debian package marks them as conffiles instead).
ETC_FILES := scripts/sente-lite.conf:sente-lite/sente-lite.conf \
             scripts/sente-lite.default:default/sente-lite \
             scripts/sente-lite.logrotate:logrotate.d/sente-lite
DOCS      := README.md CHANGELOG.md SECURITY.md CONTRIBUTING.md LICENSE docs/protocol.md

install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man8 \
	    $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(PREFIX)/share/sente-lite $(DESTDIR)$(DOCDIR) \
	    $(DESTDIR)$(SYSCONFDIR)/sente-lite $(DESTDIR)$(SYSCONFDIR)/default \
	    $(DESTDIR)$(SYSCONFDIR)/logrotate.d
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/sente-lite
	install -m 0644 man/sente-lite.8 $(DESTDIR)$(PREFIX)/share/man/man8/sente-lite.8
	sed 's|/usr/local/bin/sente-lite|$(PREFIX)/bin/sente-lite|; s|/etc/|$(SYSCONFDIR)/|g' \
	    scripts/sente-lite.service > $(DESTDIR)$(SYSTEMDDIR)/sente-lite.service
	chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/sente-lite.service
	install -m 0644 scripts/sente-lite.socket $(DESTDIR)$(SYSTEMDDIR)/sente-lite.socket
	install -m 0755 scripts/health-check.sh $(DESTDIR)$(PREFIX)/share/sente-lite/health-check.sh
	install -m 0644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	@for pair in $(ETC_FILES); do \
	    src=$${pair%%:*}; dst=$(DESTDIR)$(SYSCONFDIR)/$${pair#*:}; \
	    if [ -e "$$dst" ]; then echo "keeping $$dst (exists)"; \
	    else echo "install -m 0644 $$src $$dst"; install -m 0644 "$$src" "$$dst" || exit 1; fi; \
	done

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/sente-lite $(DESTDIR)$(PREFIX)/share/man/man8/sente-lite.8 \
	    $(DESTDIR)$(SYSTEMDDIR)/sente-lite.service $(DESTDIR)$(SYSTEMDDIR)/sente-lite.socket \
	    $(DESTDIR)$(PREFIX)/share/sente-lite/health-check.sh
	rm -f $(addprefix $(DESTDIR)$(DOCDIR)/,$(notdir $(DOCS)))
	-rmdir $(DESTDIR)$(DOCDIR) $(DESTDIR)$(PREFIX)/share/sente-lite 2>/dev/null
	@for pair in $(ETC_FILES); do \
	    src=$${pair%%:*}; dst=$(DESTDIR)$(SYSCONFDIR)/$${pair#*:}; \
	    if cmp -s "$$src" "$$dst"; then rm -f "$$dst"; \
	    elif [ -e "$$dst" ]; then echo "keeping $$dst (changed)"; fi; \
	done
	-rmdir $(DESTDIR)$(SYSCONFDIR)/sente-lite 2>/dev/null

# The Debian package, built from a copy of the tree so dpkg-buildpackage's
# output (written to the parent directory) stays under build/deb/.
deb:
	scripts/deps.sh --deb
	rm -rf build/deb && mkdir -p build/deb/sente-lite-$(VERSION)
	tar --exclude=./build --exclude=./build-asan --exclude=./build-fuzz --exclude=./.git --exclude=./sente-lite \
	    --exclude=node_modules --exclude=__pycache__ -cf - . | tar -C build/deb/sente-lite-$(VERSION) -xf -
	cd build/deb/sente-lite-$(VERSION) && dpkg-buildpackage -us -uc -b
	@ls build/deb/*.deb

format:
	clang-format -i src/*.c shm/*.c include/*.h tests/unit/*.c tests/unit/*.h

clean:
	rm -rf build build-asan build-fuzz build-mutant-* sente-lite

# --- web ---
# The browser side (docs/web.md): web/ is compiled into the binary by
# scripts/embed-web.sh; its object goes into $(LIB), so the server and every
# unit test that links the library have it.
#   make check-web    the client library's Node tests and the browser tests
#                     (headless Debian chromium) against $(BIN); installs
#                     what they need with scripts/deps-web.sh
WEB_FILES := web/index.html web/demo.html web/dashboard.html web/sente-lite.js web/favicon.ico
WEB_GEN   := $(BUILD)/gen/web_assets.c
WEB_OBJ   := $(BUILD)/obj/gen/web_assets.o

$(WEB_GEN): scripts/embed-web.sh $(WEB_FILES)
	@mkdir -p $(dir $@)
	sh scripts/embed-web.sh $@

$(WEB_OBJ): $(WEB_GEN) include/sl_web.h include/sl_http.h include/sl_common.h
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(LIB): $(WEB_OBJ)
$(CRASH_LIB): $(WEB_OBJ)

.PHONY: check-web
check-web: $(BIN)
	scripts/deps-web.sh
	SENTE_LITE_BIN=$(abspath $(BIN)) scripts/check-web.sh
# --- web ---

# --- sente-bench ---

# Where an idle TLS connection's memory goes inside OpenSSL (scripts/bench/README.md).
$(BUILD)/tls-mem: scripts/bench/tls_mem.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< -lssl -lcrypto
# Load generator (tests/bench/sb_*.c, man/sente-bench.1): an independent
# RFC 6455 client on libevent; it does not link the server library.
SB_SRC := $(wildcard tests/bench/sb_*.c)
SB_HDR := $(wildcard tests/bench/sb*.h)

all: $(BUILD)/sente-bench
# tests/integration/test_bench_smoke.py runs the generator of the same build.
check-integration: $(BUILD)/sente-bench
# tests/integration/test_tls_mem.py runs the tool of the same build.
check-integration: $(BUILD)/tls-mem
check-bins: $(BUILD)/sente-bench $(BUILD)/tls-mem

$(BUILD)/sente-bench: $(SB_SRC) $(SB_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $(SB_SRC) -levent -lssl -lcrypto -lz -lm
# --- sente-bench ---

# --- ceiling ---
# Reference fan-out servers for the benchmark table (tests/bench/ceiling.c):
# where this machine's limit is with one write per message per subscriber
# (--mode raw) and with one write per subscriber per loop turn (--mode
# batched).  Standalone: it links libcrypto only, not the server library.
$(BUILD)/bench/ceiling: tests/bench/ceiling.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< -lcrypto

bench bench-quick: $(BUILD)/bench/ceiling
# --- ceiling ---

# --- fuzz ---
# libFuzzer targets (tests/fuzz/README.md).  `make check-fuzz` replays the
# committed corpora (one test per target: a finding aborts the target)
# through the same targets linked with a plain main()
# (tests/fuzz/replay.c) in the current build (gcc; SAN=1: ASan/UBSan), so
# the normal check needs no clang; `make fuzz` builds them with clang and
# libFuzzer (build-fuzz/) and runs each for FUZZ_SECONDS; new corpus
# entries go to build-fuzz/corpus/, findings to build-fuzz/artifacts/
# (`make fuzz-merge` adds what is new to tests/fuzz/corpus/).
FUZZ_TARGETS := http ws utf8 conf e2e token pmd tls
FUZZ_SECONDS ?= 60
FUZZ_REPLAY  := $(patsubst %,$(BUILD)/fuzz/replay_%,$(FUZZ_TARGETS))
FUZZ_BINS    := $(patsubst %,build-fuzz/fuzz/fuzz_%,$(FUZZ_TARGETS))

.PHONY: check-fuzz fuzz fuzz-build fuzz-merge

$(BUILD)/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< tests/fuzz/replay.c $(LIB) $(LDLIBS)

check-bins: $(FUZZ_REPLAY)
check-fuzz: $(FUZZ_REPLAY)
	@passed=0; failed=0; \
	for t in $(FUZZ_TARGETS); do \
	    out=$$($(BUILD)/fuzz/replay_$$t tests/fuzz/corpus/$$t 2>&1); rc=$$?; \
	    n=$$(printf '%s\n' "$$out" | sed -n 's/^\([0-9]*\) inputs replayed$$/\1/p'); \
	    if [ $$rc -eq 0 ] && [ -n "$$n" ]; then echo "fuzz $$t: $$n inputs replayed"; passed=$$((passed + 1)); \
	    else printf '%s\n' "$$out" | tail -20; echo "fuzz $$t: FAILED (exit $$rc)"; failed=$$((failed + 1)); fi; \
	done; \
	echo "fuzz: $$passed passed, $$failed failed"; [ $$failed -eq 0 ]

build-fuzz/fuzz/fuzz_%: tests/fuzz/fuzz_%.c build-fuzz/libsente.a
	@mkdir -p $(dir $@)
	clang $(CPPFLAGS) $(CFLAGS) -fsanitize=fuzzer -o $@ $< build-fuzz/libsente.a $(LDLIBS)

ifeq ($(FUZZ),1)
fuzz-build: $(FUZZ_BINS)
else
fuzz-build:
	scripts/deps.sh --fuzz
	$(MAKE) FUZZ=1 fuzz-build
endif

# One target after the other (the machine is shared): FUZZ_SECONDS each.
fuzz: fuzz-build
	@mkdir -p build-fuzz/artifacts
	@for t in $(FUZZ_TARGETS); do \
	    mkdir -p build-fuzz/corpus/$$t; \
	    echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	    nice -n 10 build-fuzz/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	        -dict=tests/fuzz/$$t.dict -artifact_prefix=build-fuzz/artifacts/$$t- \
	        -print_final_stats=1 build-fuzz/corpus/$$t tests/fuzz/corpus/$$t 2>&1 \
	        | grep -E '^#[0-9]+ *DONE|stat::number_of_executed_units|ERROR|SUMMARY|Test unit written' \
	        || true; \
	    if ls build-fuzz/artifacts/$$t-* >/dev/null 2>&1; then echo "fuzz_$$t: FINDING in build-fuzz/artifacts"; exit 1; fi; \
	done

# Add what the runs found that covers something new to the committed corpora.
fuzz-merge: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	    build-fuzz/fuzz/fuzz_$$t -merge=1 tests/fuzz/corpus/$$t build-fuzz/corpus/$$t 2>&1 | tail -1; \
	done
# --- fuzz ---

# --- autobahn ---
# RFC 6455 conformance (scripts/check-autobahn.sh): the vendored
# Autobahn|Testsuite fuzzingclient, sections 1-10 with 9.*, against /echo of
# $(BIN); about 25 s on either build, so both run it.
.PHONY: check-autobahn
# RFC 6455 sections 1-10 (9.* included) over ws:// and wss://, each with a
# representative slice of permessage-deflate (12.*, 13.*: one case of each
# group's sizes and window/context variants); the whole of 12.* and 13.* on
# both transports is check-autobahn-full (about 45 minutes: not in check).
AUTOBAHN_PMD_SLICE := 12.1.3,12.2.5,12.3.7,12.4.9,12.5.11,13.1.3,13.2.5,13.3.7,13.4.9,13.5.11,13.6.13,13.7.15
# The ASan pass runs 1-10 over ws:// only: conformance is the normal pass's
# (all four runs); under the sanitizers the frame engine is driven here, the
# TLS transport by test_tls, test_compression, the web tests over https and
# the fuzz_tls replay, the deflate codec by test_compression and the
# fuzz_pmd replay - the same code as in the normal pass.
# fast_utf8.py: the client's UTF-8 check (tests/autobahn/README.md), first
# compared with autobahn's own on random input.
check-autobahn: $(BIN)
	/usr/bin/python3 tests/autobahn/testsuite/fast_utf8.py 20000
	scripts/check-autobahn.sh $(abspath $(BIN)) --include-perf
ifneq ($(SAN),1)
	scripts/check-autobahn.sh $(abspath $(BIN)) --cases "$(AUTOBAHN_PMD_SLICE)"
	AUTOBAHN_TLS=1 scripts/check-autobahn.sh $(abspath $(BIN)) --include-perf
	AUTOBAHN_TLS=1 scripts/check-autobahn.sh $(abspath $(BIN)) --cases "$(AUTOBAHN_PMD_SLICE)"
endif

# permessage-deflate in full: 12.* and 13.* (216 cases) over ws:// and
# wss://, one group per run so that each stays within the runner's bound.
check-autobahn-full: $(BIN)
	for t in 0 1; do for g in 12.1 12.2 12.3 12.4 12.5 13.1 13.2 13.3 13.4 13.5 13.6 13.7; do \
	    AUTOBAHN_TLS=$$t scripts/check-autobahn.sh $(abspath $(BIN)) --timeout 900 --cases "$$g.*" || exit 1; \
	done; done
# --- autobahn ---
