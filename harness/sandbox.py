"""Confinement for every process that imports participant code: bubblewrap where Linux allows it,
a per-run cgroup where the machine allows one, and resource limits always.

`start_sandboxed` is the single function that starts such a process. With `bwrap` the process
sees a minimal, read-only root (the system's libraries, the interpreter, the environment's
packages, the harness package and the paths it is given), a fresh private /tmp and /dev/shm of a
fixed size, and its work directory (the only place it can write). It has no network, sees no
other process, runs in isolated mode with a cleared environment, and cannot make further
namespaces, so it can neither remount nor unmount anything.

The harness often runs as root. A user namespace made by root maps the sandboxed user back to
host root, so owner permissions would still let it read root's files wherever they are visible.
So as root the launch has two layers: an outer bwrap (root, no user namespace) builds the minimal
root and keeps only CAP_SETUID and CAP_SETGID; `setpriv` then becomes the unprivileged host
identity (default `nobody`) with no capabilities and no_new_privs; an inner bwrap, run as that
identity, makes the user namespace, the private /tmp and /dev/shm, and binds the work directory.
Not as root, one layer does it all as the current user.

The cgroup (v1 or v2) gives a hard memory ceiling without swap, a process cap, a CPU quota of the
run's thread count, its CPU time, and a freezer; each missing controller is named in a note.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import resource
import secrets
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.cpus import format_cpus
from harness.errors import ConfigError

SANDBOX_MODES = ("auto", "bwrap", "none")
MAX_FILE_BYTES = 2**30  # default: no file the child writes may grow past the disk quota (RLIMIT_FSIZE)
MAX_PROCESSES = 256           # pids.max of the run's cgroup (threads count)
NOBODY = 65534
DEFAULT_IDENTITY = "nobody"
SANDBOX_UID = 1000            # the user id the sandboxed process sees inside its user namespace
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer", "cpuset")  # cpuset last: only for a CPU lease
FREEZE_TIMEOUT_SECONDS = 5.0
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# The few files of /etc that Python, glibc and torch read; nothing else of the host's configuration.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime",
             "hosts", "host.conf", "alternatives", "mime.types")
TOP_LEVEL_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
GPU_DEVICES = ("/dev/nvidia-caps", "/dev/dri")


@dataclass(frozen=True)
class Isolation:
    """What a run actually got; recorded with it."""

    sandbox: str
    """`bwrap` or `none`."""
    memory: str
    """`cgroup` (the kernel enforces the memory budget) or `monitor` (the supervisor does)."""
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"sandbox": self.sandbox, "memory_enforcement": self.memory, "note": self.note}


@dataclass(frozen=True)
class Confinement:
    """How every child on participant code is confined (resolved once per harness invocation)."""

    sandbox: str = "none"
    """`bwrap` or `none` (already resolved from `auto`)."""
    identity: tuple[int, int] | None = None
    """Host uid and gid the sandboxed process runs as; None: the harness's own user."""
    note: str = ""

    def host_identity(self) -> tuple[int, int]:
        return self.identity if self.identity is not None else (os.getuid(), os.getgid())

    def as_dict(self) -> dict[str, str]:
        uid, gid = self.host_identity()
        return {"sandbox": self.sandbox, "identity": f"{uid}:{gid}", "note": self.note}


@dataclass(frozen=True)
class SandboxSpec:
    """What one sandboxed child may see and use."""

    work_dir: Path
    """Made by the parent; the only writable path, at the same path inside."""
    read_only: tuple[Path, ...] = ()
    """Extra host files or folders shown read-only at the same path (the entry, the data file)."""
    tmp_bytes: int = 1 << 30
    """Size of the fresh /tmp and of the fresh /dev/shm."""
    environment: dict[str, str] = field(default_factory=dict)
    """On top of a cleared environment and the defaults of `sandbox_environment`."""
    gpu: bool = False
    cpus: tuple[int, ...] = ()
    """The run's CPU lease (harness.cpus): the process's affinity mask; empty: every CPU."""


def parse_identity(identity: str | None) -> tuple[int, int]:
    """`nobody`, `user`, `user:group`, `uid` or `uid:gid` -> (uid, gid) on this host."""
    text = (identity or DEFAULT_IDENTITY).strip()
    user, _, group = text.partition(":")
    try:
        if user.isdigit():
            uid = gid = int(user)
        else:
            entry = pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"sandbox identity {text!r}: no such user or group on this machine") from None
    if uid == 0 or gid == 0:
        raise ConfigError(f"sandbox identity {text!r} is root: give an unprivileged user such as 'nobody'")
    return uid, gid


def resolve_confinement(mode: str, identity: str | None = None) -> Confinement:
    """`auto` -> bwrap when it works here, else none (with a warning note); `bwrap` must work."""
    if mode not in SANDBOX_MODES:
        raise ConfigError(f"--sandbox must be one of {', '.join(SANDBOX_MODES)}, got {mode!r}")
    user = f"uid {os.getuid()}"
    if mode == "none":
        return Confinement("none", None, f"WARNING: sandbox disabled (--sandbox none): participant code runs as "
                                         f"{user} with the harness's own access, isolated by process only")
    ids, note = None, ""
    if os.geteuid() == 0:
        ids = parse_identity(identity)
    elif identity is not None:
        note = f"the harness does not run as root: participant code runs as {user}, not as {identity!r}"
    problem = bwrap_problem(ids)
    if problem is None:
        return Confinement("bwrap", ids, note)
    if mode == "bwrap":
        raise ConfigError(f"--sandbox bwrap was asked for, but {problem}")
    return Confinement("none", None, f"WARNING: no sandbox: {problem}; participant code runs as {user} with the "
                                     "harness's own access, isolated by process only")


def resolve_mode(mode: str) -> tuple[str, str]:
    """The mode and note of `resolve_confinement` (kept for callers that need only those)."""
    confinement = resolve_confinement(mode)
    return confinement.sandbox, confinement.note


def bwrap_problem(identity: tuple[int, int] | None = None) -> str | None:
    """Why the sandbox cannot confine a run here, or None: launches the real sandbox once."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv is not installed (Debian/Ubuntu: apt-get install util-linux)"
    confinement = Confinement("bwrap", identity or (parse_identity(None) if os.geteuid() == 0 else None))
    with tempfile.TemporaryDirectory(prefix="ptb-harness-probe-") as scratch:
        work = Path(scratch) / "work"
        work.mkdir()
        spec = SandboxSpec(work, tmp_bytes=1 << 20)
        try:
            child = start_sandboxed([sys.executable, "-I", "-c", "import harness"], spec, confinement, None,
                                    stdout=subprocess.PIPE)
            output, _ = child.communicate(timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bwrap could not start: {exc}"
    if child.returncode != 0:
        text = output.decode(errors="replace").strip()
        return f"bwrap cannot create the sandbox here: {text or f'exit code {child.returncode}'}"
    return None


def sandbox_environment(spec: SandboxSpec, confinement: Confinement) -> dict[str, str]:
    """The child's whole environment: fixed defaults (home and caches in its private, fresh places)
    under the spec's variables. Nothing of the harness's environment leaks in."""
    private = Path("/tmp") if confinement.sandbox == "bwrap" else spec.work_dir / ".private"
    cache = private / ".cache"  # made on first use, so /tmp is empty at start
    uid, _ = confinement.host_identity()
    return {
        "PATH": SAFE_PATH, "LANG": "C.UTF-8", "TMPDIR": str(private), "HOME": str(private),
        "XDG_CACHE_HOME": str(cache), "TORCH_HOME": str(cache / "torch"), "HF_HOME": str(cache / "huggingface"),
        "MPLCONFIGDIR": str(cache / "matplotlib"), "TRITON_CACHE_DIR": str(cache / "triton"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "USER": "participant", "LOGNAME": "participant",
        "HARNESS_SANDBOX": confinement.sandbox, "HARNESS_SANDBOX_UID": str(uid),
        **spec.environment,
    }


def start_sandboxed(argv: list[str], spec: SandboxSpec, confinement: Confinement, cgroup: Cgroup | None,
                    pass_fds: tuple[int, ...] = (), stdout: int | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` confined: THE single way to start a process that imports participant code.

    The work directory becomes the identity's (mode 0700). Between fork and exec the child gets its
    resource limits and joins the cgroup (as root, before any change of user). It runs in its own
    session with stdin from /dev/null and stdout and stderr on `stdout` (a pipe the parent owns).
    """
    work_dir = spec.work_dir.resolve()
    spec = SandboxSpec(work_dir, tuple(p.resolve() for p in spec.read_only), spec.tmp_bytes,
                       dict(spec.environment), spec.gpu, spec.cpus)
    env = sandbox_environment(spec, confinement)
    if confinement.sandbox == "bwrap":
        _own(work_dir, confinement.host_identity())
        command, popen_env = bwrap_launch(argv, spec, confinement, env), {"PATH": SAFE_PATH}
    elif confinement.sandbox == "none":
        work_dir.chmod(0o700)
        (work_dir / ".private").mkdir(exist_ok=True)
        command, popen_env = list(argv), env
    else:
        raise ConfigError(f"unknown sandbox {confinement.sandbox!r}: resolve it with resolve_confinement")
    return subprocess.Popen(
        command, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None, start_new_session=True, cwd=work_dir,
        env=popen_env, preexec_fn=child_preexec(cgroup, spec.tmp_bytes, spec.cpus),
    )


def _own(work_dir: Path, identity: tuple[int, int]) -> None:
    """The work directory belongs to the sandboxed identity, and only to it."""
    if os.geteuid() == 0:
        os.chown(work_dir, *identity, follow_symlinks=False)
    work_dir.chmod(0o700)


def bwrap_launch(argv: Sequence[str], spec: SandboxSpec, confinement: Confinement, env: dict[str, str]) -> list[str]:
    """The bwrap command line: two layers as root (see the module's docstring), else one."""
    bwrap = shutil.which("bwrap") or "bwrap"
    namespaces = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
                  "--hostname", "sandbox", "--die-with-parent", "--new-session"]
    private = _private_args(spec, env)
    if os.geteuid() != 0:
        return [bwrap, *namespaces, "--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID),
                "--gid", str(SANDBOX_UID), "--cap-drop", "ALL", *_minimal_root(spec, bind_work_dir=False),
                "--proc", "/proc", "--dev", "/dev", *_gpu_args(spec), *private, "--", *argv]
    uid, gid = confinement.host_identity()
    outer = [bwrap, *namespaces, *_minimal_root(spec, bind_work_dir=True), "--proc", "/proc", "--dev", "/dev",
             *_gpu_args(spec), "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--"]
    drop = [shutil.which("setpriv") or "setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    # Inner: proc cannot be mounted afresh (the outer one is not fully visible), so it is bound.
    inner = [bwrap, "--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
             "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
             "--ro-bind", "/proc", "/proc", "--dev", "/dev", *_gpu_args(spec), *private, "--"]
    return [*outer, *drop, *inner, *argv]


def _private_args(spec: SandboxSpec, env: dict[str, str]) -> list[str]:
    """Fresh, size-capped /tmp and /dev/shm, the work dir (writable), the cleared environment."""
    args = ["--size", str(spec.tmp_bytes), "--perms", "01777", "--tmpfs", "/tmp",
            "--size", str(spec.tmp_bytes), "--perms", "01777", "--tmpfs", "/dev/shm"]
    made = {Path("/"), Path("/tmp"), Path("/dev"), Path("/dev/shm")}
    for path in _outermost(spec.read_only):  # those under /tmp or /dev/shm are hidden by now: again
        if path.is_relative_to("/tmp") or path.is_relative_to("/dev/shm"):
            args += _ancestors(path, made) + ["--ro-bind", str(path), str(path)]
    args += _ancestors(spec.work_dir, made)
    args += ["--bind", str(spec.work_dir), str(spec.work_dir), "--chdir", str(spec.work_dir), "--clearenv"]
    for key, value in sorted(env.items()):
        args += ["--setenv", key, value]
    return args


def _minimal_root(spec: SandboxSpec, bind_work_dir: bool) -> list[str]:
    """Read-only: /usr (and the top-level links to it), a few /etc files, the interpreter, the
    environment's packages, the harness package and the spec's paths. Nothing else of the host.
    With `bind_work_dir` (the outer layer) also the work dir, writable, for the inner one to bind."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in TOP_LEVEL_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_FILES:
        if (Path("/etc") / name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    # The mount points of the private /tmp (the inner layer cannot make one on its read-only root
    # when nothing else, such as a work dir under /tmp, made it).
    args += ["--perms", "01777", "--dir", "/tmp"]
    made = {Path("/"), Path("/usr"), Path("/etc"), Path("/tmp"), *(Path("/") / n for n in TOP_LEVEL_LINKS)}
    for path in _outermost([*_python_paths(), *spec.read_only]):
        if path.is_relative_to("/usr"):
            continue  # already visible
        args += _ancestors(path, made) + ["--ro-bind", str(path), str(path)]
    if bind_work_dir:
        args += _ancestors(spec.work_dir, made) + ["--bind", str(spec.work_dir), str(spec.work_dir)]
    return args


def _python_paths() -> list[Path]:
    """What the interpreter needs: its installation, the environment, site-packages, the harness."""
    import harness

    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).parent,
             Path(harness.__file__).resolve().parent}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(Path(sysconfig.get_paths()[key]))
    resolved: set[Path] = set()
    for path in paths:
        resolved.add(path.resolve())
        resolved.add(Path(os.path.abspath(path)))  # a venv reached through a link needs both names
    return [p for p in resolved if p.exists()]


def _ancestors(path: Path, made: set[Path]) -> list[str]:
    """Create the parents of `path` as 0755 folders first: bwrap would copy the host's modes
    (/root is 0700, which the unprivileged identity could not cross)."""
    args: list[str] = []
    for parent in reversed(path.parents):
        if parent not in made:
            made.add(parent)
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """The paths, without those inside another folder of the list (one bind covers them)."""
    ordered = sorted({p for p in paths if p.exists()}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in ordered:
        if not any(path.is_relative_to(parent) for parent in kept if parent.is_dir()):
            kept.append(path)
    return kept


def _gpu_args(spec: SandboxSpec) -> list[str]:
    """The NVIDIA device nodes, when the run may use the GPU."""
    if not spec.gpu:
        return []
    nodes = sorted(str(p) for p in Path("/dev").glob("nvidia*")) + [p for p in GPU_DEVICES if Path(p).exists()]
    args: list[str] = []
    for node in dict.fromkeys(nodes):
        args += ["--dev-bind", node, node]
    return args


def child_preexec(cgroup: Cgroup | None, file_bytes: int = MAX_FILE_BYTES,
                  cpus: tuple[int, ...] = ()) -> Callable[[], None]:
    """Runs in the child between fork and exec: file-size and core limits, the CPU set's affinity,
    then the cgroup (as the harness's user, before bwrap changes anything, so nothing the child
    starts escapes it). The affinity alone could be widened by the child; the cgroup's cpuset cannot."""

    def prepare() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if cpus:
            os.sched_setaffinity(0, cpus)
        if cgroup is not None:
            cgroup.join()

    return prepare


def disk_usage(path: Path, max_entries: int = 100_000) -> tuple[int, int]:
    """(bytes, entries) under `path`, by an lstat walk that never follows a link. Stops past
    `max_entries` (the caller treats that as a violation). A file counts its apparent size or its
    allocated blocks, whichever is larger, so neither sparse nor tiny files hide usage."""
    total, entries = 0, 0
    for info in _walk(path):
        entries += 1
        total += max(info.st_size, getattr(info, "st_blocks", 0) * 512)
        if entries > max_entries:
            break
    return total, entries


class DiskUnreadable(Exception):
    """A folder in a child's work directory that the harness cannot open to measure."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _walk(root: Path) -> Iterator[os.stat_result]:
    """Every entry under `root`, each folder opened by a descriptor relative to its parent with
    O_NOFOLLOW: a link swapped in anywhere on the way is never followed, and nothing is changed."""
    try:
        pending = [os.open(root, _DIR_FLAGS)]
    except FileNotFoundError:
        return
    try:
        yield from _walk_from(pending)
    finally:  # the walk may be stopped early (past the entry cap): close what is still open
        for folder in pending:
            os.close(folder)


def _walk_from(pending: list[int]) -> Iterator[os.stat_result]:
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                children = list(listing)
            for child in children:
                try:
                    info = child.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield info
                if stat.S_ISDIR(info.st_mode):
                    try:
                        pending.append(os.open(child.name, _DIR_FLAGS, dir_fd=folder))
                    except FileNotFoundError:
                        continue
                    except OSError as exc:  # unreadable, or turned into a link meanwhile
                        raise DiskUnreadable(f"a folder the harness cannot open to measure ({exc.strerror})") from exc
        finally:
            os.close(folder)


class Cgroup:
    """A per-run cgroup: memory ceiling without swap, process cap, CPU quota, CPU time, freezer.

    v1 has one folder per controller (`paths`); v2 one folder for all. Controllers the machine
    lacks are missing from `controllers`, and `create` names them in its note.
    """

    def __init__(self, paths: dict[str, Path], version: int) -> None:
        self.paths = paths
        self.version = version

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset(self.paths)

    @property
    def limits_memory(self) -> bool:
        return "memory" in self.paths

    @property
    def can_freeze(self) -> bool:
        return "freezer" in self.paths

    @classmethod
    def create(cls, name: str, memory_bytes: int, cpus: float | None = None,
               cpuset: tuple[int, ...] = ()) -> tuple[Cgroup | None, str]:
        """The cgroup (or None when no controller is usable), and a note on what is missing.
        `cpuset`: confine the group to these CPUs (a run's lease), not only to a quota of CPU time."""
        try:
            group = cls._make(name, with_cpuset=bool(cpuset))
        except (OSError, ValueError) as exc:
            return None, f"no cgroup ({exc}): the supervisor's measurement enforces the memory budget"
        problems = group._limit(memory_bytes, cpus, cpuset)
        if not group.paths:
            group.remove()
            return None, f"no cgroup ({'; '.join(problems)}): the supervisor's measurement enforces the memory budget"
        return group, "; ".join(problems)

    @classmethod
    def _make(cls, name: str, with_cpuset: bool = False) -> Cgroup:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad cgroup name {name!r}")
        v1 = _v1_parents()
        if "memory" in v1:
            paths = {controller: v1[controller] / name
                     for controller in (V1_CONTROLLERS if with_cpuset else V1_CONTROLLERS[:-1]) if controller in v1}
            made: list[Path] = []
            try:
                for path in dict.fromkeys(paths.values()):
                    path.mkdir(exist_ok=True)
                    made.append(path)
            except OSError:
                for path in made:
                    path.rmdir()
                raise
            return cls({c: p.resolve() for c, p in paths.items()}, 1)
        return cls._make_v2(name, with_cpuset)

    @classmethod
    def _make_v2(cls, name: str, with_cpuset: bool = False) -> Cgroup:
        parent = _v2_parent()
        if parent is None:
            raise ValueError("no cgroup memory controller (neither v1 nor v2)")
        available = set((parent / "cgroup.controllers").read_text().split())
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        wanted = {"memory", "pids", "cpu"} | ({"cpuset"} if with_cpuset else set())
        for controller in (wanted & available) - enabled:
            try:  # fails (EBUSY) where this cgroup holds processes itself; then it stays missing
                (parent / "cgroup.subtree_control").write_text(f"+{controller}")
                enabled.add(controller)
            except OSError:
                continue
        path = parent / name
        path.mkdir(exist_ok=True)
        # cpu time (cpu.stat usage_usec) and the freezer (cgroup.freeze) come with every v2 cgroup.
        controllers = {c: path for c in ("memory", "pids", "cpu", "cpuset") if c in enabled & wanted}
        controllers["cpuacct"] = path
        if (path / "cgroup.freeze").exists():
            controllers["freezer"] = path
        return cls(controllers, 2)

    def _limit(self, memory_bytes: int, cpus: float | None, cpuset: tuple[int, ...] = ()) -> list[str]:
        """Set each controller's limit; drop (and name) those that cannot be set."""
        settings: dict[str, list[tuple[str, str]]]
        if self.version == 1:
            settings = {"memory": [("memory.limit_in_bytes", str(memory_bytes)),
                                   ("memory.memsw.limit_in_bytes?", str(memory_bytes))],
                        "pids": [("pids.max", str(MAX_PROCESSES))]}
            if cpus is not None:
                settings["cpu"] = [("cpu.cfs_period_us", str(CPU_PERIOD_US)),
                                   ("cpu.cfs_quota_us", str(max(1000, round(cpus * CPU_PERIOD_US))))]
            if cpuset and "cpuset" in self.paths:  # a v1 cpuset starts empty: memory nodes too, the parent's
                mems = (self.paths["cpuset"].parent / "cpuset.mems").read_text().strip()
                settings["cpuset"] = [("cpuset.cpus", format_cpus(cpuset)), ("cpuset.mems", mems)]
        else:
            settings = {"memory": [("memory.max", str(memory_bytes)), ("memory.swap.max?", "0")],
                        "pids": [("pids.max", str(MAX_PROCESSES))]}
            if cpus is not None:
                settings["cpu"] = [("cpu.max", f"{max(1000, round(cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")]
            if cpuset:
                settings["cpuset"] = [("cpuset.cpus", format_cpus(cpuset))]
        problems = []
        for controller in ("memory", "pids", "cpu", "cpuacct", "freezer", *(("cpuset",) if cpuset else ())):
            if controller not in self.paths:
                problems.append(f"no cgroup {controller} controller: {_CONSEQUENCE[controller]}")
                continue
            try:
                for name, value in settings.get(controller, []):
                    optional = name.endswith("?")  # memsw / swap accounting may be off: no swap to limit
                    target = self.paths[controller] / name.rstrip("?")
                    if optional and not target.exists():
                        continue
                    target.write_text(value)
            except OSError as exc:
                problems.append(f"cgroup {controller} limit not set ({exc}): {_CONSEQUENCE[controller]}")
                del self.paths[controller]
        return problems

    def _folders(self) -> list[Path]:
        return list(dict.fromkeys(self.paths.values()))

    def join(self) -> None:
        """Move the calling process in (used between fork and exec, so nothing escapes it)."""
        pid = str(os.getpid())
        for path in self._folders():
            (path / "cgroup.procs").write_text(pid)

    def pids(self) -> list[int]:
        """The processes in the group now."""
        found: set[int] = set()
        for path in self._folders():
            try:
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                continue
        return sorted(found)

    def thread_count(self) -> int:
        """Threads of the run's processes in the group right now; bwrap's own (single-threaded)
        processes of the sandbox layers are not the run's and are left out."""
        bwrap = os.path.realpath(shutil.which("bwrap") or "/usr/bin/bwrap")
        total = 0
        for pid in self.pids():
            try:
                if os.path.realpath(f"/proc/{pid}/exe") == bwrap:
                    continue
            except OSError:
                pass  # not ours to inspect: count it
            try:
                total += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                continue  # exited meanwhile
        return total

    def cpu_seconds(self) -> float:
        """CPU time used by the group so far (exited processes included)."""
        try:
            if "cpuacct" in self.paths and self.version == 1:
                return int((self.paths["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
            if "cpuacct" in self.paths:
                for line in (self.paths["cpuacct"] / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
        except (OSError, ValueError):
            pass
        return _live_cpu_seconds(self.pids())

    def freeze(self) -> bool:
        """Stop every process of the group; True once the kernel reports the group frozen."""
        if not self.can_freeze:
            return False
        path = self.paths["freezer"]
        try:
            if self.version == 1:
                (path / "freezer.state").write_text("FROZEN")
            else:
                (path / "cgroup.freeze").write_text("1")
            deadline = time.monotonic() + FREEZE_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if self._frozen():
                    return True
                time.sleep(0.005)
        except OSError:
            return False
        return False

    def _frozen(self) -> bool:
        path = self.paths["freezer"]
        if self.version == 1:
            return (path / "freezer.state").read_text().strip() == "FROZEN"
        return "frozen 1" in (path / "cgroup.events").read_text().splitlines()

    def thaw(self) -> None:
        if not self.can_freeze:
            return
        path = self.paths["freezer"]
        try:
            if self.version == 1:
                (path / "freezer.state").write_text("THAWED")
            else:
                (path / "cgroup.freeze").write_text("0")
        except OSError:
            return

    def usage_bytes(self) -> int | None:
        """Memory charged to the group now (None without the memory controller)."""
        if "memory" not in self.paths:
            return None
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        try:
            return int((self.paths["memory"] / name).read_text())
        except (OSError, ValueError):
            return None

    def peak_bytes(self) -> int:
        if "memory" not in self.paths:
            return 0
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.paths["memory"] / name).read_text())
        except (OSError, ValueError):
            return 0

    def oom_killed(self) -> bool:
        if "memory" not in self.paths:
            return False
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (self.paths["memory"] / name).read_text()
        except OSError:
            return False
        return any(line.startswith("oom_kill ") and int(line.split()[1]) > 0 for line in text.splitlines())

    def kill_all(self) -> None:
        """SIGKILL every process of the group, frozen first so none can fork away meanwhile."""
        if self.version == 2 and "freezer" in self.paths and (self.paths["freezer"] / "cgroup.kill").exists():
            try:
                (self.paths["freezer"] / "cgroup.kill").write_text("1")
                return
            except OSError:
                pass
        frozen = self.freeze()
        for _ in range(3):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    continue
            if frozen:
                self.thaw()  # v1: a frozen task dies only once thawed
                frozen = False
            if not pids:
                break
            time.sleep(0.02)

    def remove(self) -> None:
        """Delete the cgroup once its last (killed) process is gone; give the kernel a moment."""
        for path in self._folders():
            for _ in range(40):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.05)


def remove_tree(path: Path) -> None:
    """Delete a folder a sandboxed process wrote, whatever it made there. `rm -rf` walks iteratively
    and never follows a link; Python's rmtree recurses once per level, so a chain of thousands of
    nested folders raised RecursionError out of the run's clean-up and turned its verdict into a
    harness error."""
    if not os.path.lexists(path):
        return
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


CGROUP_PREFIX = "ptb-harness-"
"""Every run's cgroup is named ptb-harness-<supervisor pid>.<its pid namespace>-<random>-<process>."""


def pid_namespace() -> int:
    """This process's pid namespace (the inode of /proc/self/ns/pid): a pid means something only in it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def cgroup_name(process: str, pid: int | None = None) -> str:
    """The name of a run process's cgroup: whose supervisor (pid and pid namespace) it is, and unique."""
    return f"{CGROUP_PREFIX}{os.getpid() if pid is None else pid}.{pid_namespace()}-{secrets.token_hex(4)}-{process}"


def sweep_orphan_cgroups() -> int:
    """Clear the cgroups of supervisors that are gone; return how many groups were removed.

    A supervisor killed outright (SIGKILL, a lost node) runs no clean-up: its cgroups stay, and on
    cgroup v1 a frozen scorer in one of them cannot even die (a frozen task handles no signal, so
    --die-with-parent's SIGKILL waits for ever, holding its memory). Every run first thaws, kills and
    removes the groups whose supervisor's pid is no longer alive. A live pid, even a reused one,
    keeps its groups, and so does a group of another pid namespace (another container's harness,
    whose pids mean nothing here): never someone else's."""
    removed = 0
    for name, (paths, version) in _sibling_groups().items():
        pid = _supervisor_pid(name)
        if pid is None or _pid_exists(pid):
            continue
        group = Cgroup(paths, version)
        try:
            group.thaw()  # v1: a frozen task dies only once thawed
            group.kill_all()
        except OSError:
            pass
        group.remove()
        removed += not any(path.exists() for path in paths.values())
    return removed


def _sibling_groups() -> dict[str, tuple[dict[str, Path], int]]:
    """name -> ({controller: folder}, version) of the ptb-harness-* groups beside where this process
    makes its own."""
    found: dict[str, tuple[dict[str, Path], int]] = {}
    places = [(c, parent, 1) for c, parent in _v1_parents().items()]
    v2 = _v2_parent()
    if v2 is not None:
        places += [(c, v2, 2) for c in ("freezer", "cpuacct")]
    for controller, parent, version in places:
        try:
            folders = [p for p in parent.iterdir() if p.name.startswith(CGROUP_PREFIX) and p.is_dir()]
        except OSError:
            continue
        for folder in folders:
            if controller == "freezer" and version == 2 and not (folder / "cgroup.freeze").exists():
                continue
            found.setdefault(folder.name, ({}, version))[0][controller] = folder.resolve()
    return found


def _supervisor_pid(name: str) -> int | None:
    """The supervisor's pid, when the group is of this pid namespace (else None: not ours to judge)."""
    pid, _, namespace = name[len(CGROUP_PREFIX):].split("-", 1)[0].partition(".")
    if not (pid.isdigit() and namespace.isdigit()) or int(namespace) != pid_namespace():
        return None
    return int(pid)


_CONSEQUENCE = {
    "memory": "the supervisor's measurement enforces the memory budget",
    "pids": "only the supervisor's process count limits processes",
    "cpu": "the thread count is not enforced by the kernel",
    "cpuacct": "CPU time is measured from live processes only",
    "freezer": "the run cannot be paused",
    "cpuset": "the run's CPU set is only its affinity mask, which its code could widen",
}


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path ('' for v2), from /proc/self/cgroup."""
    entries = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            entries[controller] = path
    return entries


def _pid_exists(pid: int) -> bool:
    """psutil.pid_exists, in the standard library: this module runs without third-party packages
    (bubblewrap's probe imports it with the system interpreter)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _v1_parents() -> dict[str, Path]:
    """controller -> this process's own folder in each cgroup v1 hierarchy (where it makes groups)."""
    own = _own_cgroups()
    return {c: mount_point / os.path.relpath(own[c], mount_root)
            for c, (mount_point, mount_root) in _v1_mounts().items() if c in own}


def _v2_parent() -> Path | None:
    """This process's own folder in the cgroup v2 hierarchy, if it has one with a memory controller."""
    own, mount = _own_cgroups(), _v2_mount()
    if mount is None or "" not in own:
        return None
    return mount[0] / os.path.relpath(own[""], mount[1])


def _mounts(fstype: str) -> Iterator[tuple[Path, str, list[str]]]:
    """(mount point, mount root, super options) of each mount of `fstype`."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(tail) >= 3 and tail[0] == fstype:
            yield Path(fields[4].replace("\\040", " ")), fields[3], tail[2].split(",")


def _v1_mounts() -> dict[str, tuple[Path, str]]:
    found: dict[str, tuple[Path, str]] = {}
    for point, root, options in _mounts("cgroup"):
        for controller in V1_CONTROLLERS:
            if controller in options and controller not in found:
                found[controller] = (point, root)
    return found


def _v2_mount() -> tuple[Path, str] | None:
    for point, root, _ in _mounts("cgroup2"):
        if (point / "cgroup.controllers").exists() and "memory" in (point / "cgroup.controllers").read_text().split():
            return point, root
    return None


def _live_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given live processes (children they reaped included)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        except (OSError, ValueError, IndexError):
            continue
    return total / ticks
