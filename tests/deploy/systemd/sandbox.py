"""Run a command under the seccomp filters systemd 252 loads for a unit, without systemd as PID 1.

    python tests/deploy/systemd/sandbox.py systemd/edge-agent.service -- python -m edge_agent run ...

From the unit's own lines, built with libseccomp (ctypes) the way systemd's src/shared/seccomp-util.c builds them:
`SystemCallFilter=` (groups expanded by this host's `systemd-analyze syscall-filter`, `@default` implied as
systemd does), `SystemCallArchitectures=native`, `MemoryDenyWriteExecute=`, `RestrictAddressFamilies=`,
`RestrictNamespaces=yes` and `LockPersonality=`. `MemoryDenyWriteExecute=yes` also sets the kernel's own W^X rule,
`prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)` (Linux >= 6.3; newer systemd uses it), so both forms are checked.
A call outside `SystemCallFilter=` fails with `SystemCallErrorNumber=` or, without one, kills the process (SIGSYS),
as under systemd; `SANDBOX_REFUSED=kill` kills it either way, to find such calls (the kernel's audit log names
them). The mount-namespace settings (ProtectSystem=, PrivateDevices=, ...) are not modelled here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
from pathlib import Path

ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000
CMP_NE, CMP_EQ, CMP_GE, CMP_MASKED_EQ = 1, 4, 5, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
PER_LINUX = 0
AF_MAX = 64  # every socket family number below this that is not allowed gets its own rule
NAMESPACES = [0x02000000, 0x08000000, 0x40000000, 0x00020000, 0x20000000, 0x10000000, 0x04000000]  # CLONE_NEW*
FAMILIES = {"AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}


def act_errno(code: int) -> int:
    return 0x00050000 | code


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_rule_add_array.argtypes += [ctypes.POINTER(ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


class Filter:
    """One seccomp program for the native architecture: a default action and rules."""

    def __init__(self, lib: ctypes.CDLL, default: int) -> None:
        self.lib, self.ctx = lib, lib.seccomp_init(default)
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr == -1:  # __NR_SCMP_ERROR: libseccomp does not know it (systemd skips those too)
            return
        args = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), args)
        if rc < 0 and nr >= 0:  # a pseudo number (a call of another architecture) may be refused
            raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        self.lib.seccomp_release(self.ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")


def service_settings(unit: Path) -> dict[str, list[str]]:
    """The [Service] section's assignments, each key's values in order (an empty one kept: it resets)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """`@group -> members` as this host's systemd defines them (members may be groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True)
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    if "@system-service" not in groups:
        raise RuntimeError(f"systemd-analyze syscall-filter gave no groups: {out.stderr}")
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        name = name.split(":", 1)[0]  # name:errno
        found |= expand(groups[name], groups) if name.startswith("@") else {name}
    return found


def allowed_syscalls(values: list[str], groups: dict[str, list[str]]) -> set[str] | None:
    """The allow list `SystemCallFilter=` lines give, as load-fragment.c builds it (None: no allow list)."""
    allowed: set[str] | None = None
    for value in values:
        if not value:
            allowed = None
            continue
        invert = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        if allowed is None:
            if invert:
                raise NotImplementedError("a deny-list SystemCallFilter= is not modelled")
            allowed = expand(["@default"], groups)
        allowed = allowed - names if invert else allowed | names
    return allowed


def yes(settings: dict[str, list[str]], key: str) -> bool:
    return settings.get(key, ["no"])[-1].lower() in ("yes", "true", "on", "1")


def apply(unit: Path) -> list[str]:
    """Load the unit's filters into this process (they hold across execve); what was applied, for the log."""
    settings, lib, done = service_settings(unit), _libseccomp(), []
    families = " ".join(settings.get("RestrictAddressFamilies", [])).split()
    if families:
        allowed = {FAMILIES[f] for f in families}
        f = Filter(lib, ACT_ALLOW)
        for family in sorted(set(range(AF_MAX)) - allowed):
            f.rule(act_errno(errno.EAFNOSUPPORT), "socket", (0, CMP_EQ, family, 0))
        f.rule(act_errno(errno.EAFNOSUPPORT), "socket", (0, CMP_GE, AF_MAX, 0))
        f.load()
        done.append("RestrictAddressFamilies=" + " ".join(families))
    if yes(settings, "RestrictNamespaces"):
        f = Filter(lib, ACT_ALLOW)
        f.rule(act_errno(errno.EPERM), "setns")
        f.rule(act_errno(errno.ENOSYS), "clone3")  # flags behind a pointer: glibc falls back to clone()
        for flag in NAMESPACES:
            f.rule(act_errno(errno.EPERM), "unshare", (0, CMP_MASKED_EQ, flag, flag))
            f.rule(act_errno(errno.EPERM), "clone", (0, CMP_MASKED_EQ, flag, flag))
        f.load()
        done.append("RestrictNamespaces=yes")
    if yes(settings, "LockPersonality"):
        f = Filter(lib, ACT_ALLOW)
        f.rule(act_errno(errno.EPERM), "personality", (0, CMP_NE, PER_LINUX, 0))
        f.load()
        done.append("LockPersonality=yes")
    if yes(settings, "MemoryDenyWriteExecute"):
        f = Filter(lib, ACT_ALLOW)
        f.rule(act_errno(errno.EPERM), "mmap", (2, CMP_MASKED_EQ, PROT_EXEC | PROT_WRITE, PROT_EXEC | PROT_WRITE))
        f.rule(act_errno(errno.EPERM), "mprotect", (2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.rule(act_errno(errno.EPERM), "pkey_mprotect", (2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.rule(act_errno(errno.EPERM), "shmat", (2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        f.load()
        done.append("MemoryDenyWriteExecute=yes (seccomp, as systemd 252)")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0:
            done.append("prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)")
        else:
            done.append(f"no PR_SET_MDWE on this kernel ({os.strerror(ctypes.get_errno())})")
    allowed = allowed_syscalls(settings.get("SystemCallFilter", []), syscall_groups())
    if allowed is not None:
        refused, how = ACT_KILL_PROCESS, "kill the process"
        code = settings.get("SystemCallErrorNumber", [""])[-1]
        if code and os.environ.get("SANDBOX_REFUSED") != "kill":
            refused, how = act_errno(getattr(errno, code)), f"fail with {code}"
        # the native architecture only (SystemCallArchitectures=native): another one's calls hit the default
        f = Filter(lib, refused)
        for name in sorted(allowed):
            f.rule(ACT_ALLOW, name)
        f.load()
        done.append(f"SystemCallFilter= ({len(allowed)} calls allowed, the rest {how})")
    return done


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: sandbox.py UNIT -- COMMAND [ARG...]")
    done = apply(Path(argv[0]))
    if os.environ.get("SANDBOX_VERBOSE"):
        print("sandbox: " + "; ".join(done), file=sys.stderr, flush=True)
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
