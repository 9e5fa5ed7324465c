"""Packaging as a packager meets it: the Makefile honours CFLAGS/CPPFLAGS/
LDFLAGS given on the command line, `make install` / `make uninstall` (never
overwriting or removing an edited /etc file), and the Debian package: `make
deb` builds it with dpkg-buildpackage, it is unpacked into a scratch root
(dpkg -x) and checked (`sente-lite --version`, the man page, the units, the
config files marked as conffiles), and lintian finds no errors.

These build the project again from a copy of the tree; they run once, in the
normal pass of `make check` (the sanitizer pass tests the same files)."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import BIN

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
pytestmark = pytest.mark.skipif("asan" in BIN, reason="packaging is tested in the normal pass")


def copy_tree(dst):
    subprocess.run(f"tar --exclude=./build --exclude=./build-asan --exclude=./.git "
                   f"--exclude=node_modules --exclude=./sente-lite -cf - . | tar -C {dst} -xf -",
                   shell=True, cwd=ROOT, check=True)


def test_make_with_packager_cflags(tmp_path):
    copy_tree(tmp_path)
    r = subprocess.run(["make", "-j2", "CFLAGS=-O2", "CPPFLAGS=-DSL_PACKAGER_TEST=1",
                        "LDFLAGS=-Wl,-z,relro", "build/sente-lite"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # Ours were added to theirs, not replaced by them.
    assert "-O2 -std=c11" in r.stdout and "-DSL_PACKAGER_TEST=1" in r.stdout
    assert "-Iinclude" in r.stdout
    v = subprocess.run([str(tmp_path / "build" / "sente-lite"), "--version"], capture_output=True,
                       text=True, timeout=10)
    assert v.returncode == 0 and v.stdout.startswith("sente-lite ")


def test_make_install_and_uninstall(tmp_path):
    dest = tmp_path / "root"
    out = subprocess.run(["make", "-s", "install", f"DESTDIR={dest}", "PREFIX=/usr"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for p in ("usr/bin/sente-lite", "usr/share/man/man8/sente-lite.8",
              "usr/lib/systemd/system/sente-lite.service", "usr/lib/systemd/system/sente-lite.socket",
              "etc/sente-lite/sente-lite.conf", "etc/default/sente-lite",
              "etc/logrotate.d/sente-lite", "usr/share/sente-lite/health-check.sh",
              "usr/share/doc/sente-lite/README.md", "usr/share/doc/sente-lite/protocol.md",
              "usr/share/doc/sente-lite/CHANGELOG.md", "usr/share/doc/sente-lite/LICENSE"):
        assert (dest / p).exists(), p
    unit = (dest / "usr/lib/systemd/system/sente-lite.service").read_text()
    assert "ExecStart=/usr/bin/sente-lite $SENTE_OPTS" in unit
    # An operator's edit survives a second install and an uninstall.
    conf = dest / "etc/sente-lite/sente-lite.conf"
    conf.write_text("port = 4444\n")
    again = subprocess.run(["make", "-s", "install", f"DESTDIR={dest}", "PREFIX=/usr"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and conf.read_text() == "port = 4444\n"
    un = subprocess.run(["make", "-s", "uninstall", f"DESTDIR={dest}", "PREFIX=/usr"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert un.returncode == 0, un.stderr
    assert conf.read_text() == "port = 4444\n"
    assert not (dest / "etc/default/sente-lite").exists()  # unchanged: removed
    left = [str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()]
    assert left == ["etc/sente-lite/sente-lite.conf"], left


@pytest.mark.skipif(os.geteuid() != 0 and shutil.which("dpkg-buildpackage") is None,
                    reason="needs root to install the build dependencies")
def test_debian_package(tmp_path):
    # nocheck: dh_auto_test would build and run the unit tests a third time
    # (about 35 s of CPU, 1-2 minutes on the shared machine); make check runs
    # them on both builds.
    env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck")
    r = subprocess.run(["make", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    debs = [f for f in os.listdir(os.path.join(ROOT, "build", "deb"))
            if f.endswith(".deb") and "-dbgsym_" not in f]
    assert len(debs) == 1, debs
    deb = os.path.join(ROOT, "build", "deb", debs[0])
    assert re.match(r"sente-lite_\d+\.\d+\.\d+_[a-z0-9]+\.deb", debs[0])
    root = tmp_path / "root"
    subprocess.run(["dpkg", "-x", deb, str(root)], check=True, timeout=60)
    v = subprocess.run([str(root / "usr/bin/sente-lite"), "--version"], capture_output=True,
                       text=True, timeout=10)
    assert v.returncode == 0 and v.stdout.startswith("sente-lite 0.")
    assert (root / "usr/share/man/man8/sente-lite.8.gz").exists()
    unit = (root / "lib/systemd/system/sente-lite.service").read_text()
    assert "ExecStart=/usr/bin/sente-lite $SENTE_OPTS" in unit and "Type=notify" in unit
    assert (root / "lib/systemd/system/sente-lite.socket").exists()
    assert (root / "usr/share/doc/sente-lite/copyright").exists()
    # A native package's changelog.gz is debian/changelog; the upstream
    # CHANGELOG.md keeps its own name.
    import gzip
    with gzip.open(root / "usr/share/doc/sente-lite/changelog.gz", "rt") as f:
        assert f.readline().startswith("sente-lite (")
    assert (root / "usr/share/doc/sente-lite/CHANGELOG.md.gz").exists()
    conf = root / "etc/sente-lite/sente-lite.conf"
    chk = subprocess.run([str(root / "usr/bin/sente-lite"), "-c", str(conf), "-t"],
                         capture_output=True, text=True, timeout=10)
    assert chk.returncode == 0, chk.stderr
    # The /etc files are conffiles: dpkg never overwrites an edited one.
    ctrl = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", deb, str(ctrl)], check=True, timeout=60)
    conffiles = (ctrl / "conffiles").read_text().split()
    for f in ("/etc/sente-lite/sente-lite.conf", "/etc/default/sente-lite",
              "/etc/logrotate.d/sente-lite"):
        assert f in conffiles, conffiles
    info = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True)
    # liburcu is used through its headers only (atomics, barriers), so the
    # linker drops it; README says so.
    for lib in ("libevent", "libjansson", "libssl"):
        assert lib in info.stdout, info.stdout
    # libjwt is the tests' reference only: tokens are verified with OpenSSL.
    assert "libjwt" not in info.stdout, info.stdout
    # lintian: no errors and no warnings (only I: remains, see the closing
    # note of issue 18); changelog.gz is the Debian changelog, CHANGELOG.md
    # is shipped under its own name.
    if shutil.which("lintian"):
        changes = [f for f in os.listdir(os.path.join(ROOT, "build", "deb"))
                   if f.endswith(".changes")]
        li = subprocess.run(["lintian", "--no-cfg", os.path.join(ROOT, "build", "deb", changes[0])],
                            capture_output=True, text=True, timeout=600)
        errors = [ln for ln in li.stdout.splitlines() if ln.startswith("E:")]
        assert not errors, li.stdout
        warnings = [ln for ln in li.stdout.splitlines() if ln.startswith("W:")]
        assert not warnings, li.stdout
        print(li.stdout)
