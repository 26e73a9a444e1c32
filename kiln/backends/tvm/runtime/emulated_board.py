"""An aarch64 board on this x86 machine: TVM's RPC server in an arm64 Debian root under qemu
user-mode emulation. Real aarch64 code, a real TVM runtime for aarch64, the real RPC protocol; only
the CPU is emulated (so its latencies mean little).

    python -m kiln.backends.tvm.runtime.emulated_board --port 9190                 # one server
    python -m kiln.backends.tvm.runtime.emulated_board --tracker --servers 2 --key rpi4   # a tracker

Setup (once, cached under ~/.cache/kiln/boards, 1-4 minutes): Debian's qemu-user-static and
mmdebstrap (installed with apt-get when missing and allowed), `mmdebstrap --variant=extract` of an
arm64 bookworm root with python3, and the board's Python packages from PyPI's aarch64 wheels
(apache-tvm, apache-tvm-ffi, and cloudpickle + psutil, which the RPC server needs). The server
starts workers through `sys.executable`, and binfmt is not mounted here, so Python runs through a
wrapper that qemu reports as the guest's executable (`-0`).
"""

from __future__ import annotations

import argparse
import os
import signal
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import KilnError

DEBIAN_RELEASE = "bookworm"  # CPython 3.11, as the board wheels below
BOARD_PYTHON = "3.11"
BOARD_PACKAGES = ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "cloudpickle", "psutil"]
WHEEL_PLATFORMS = ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
HOST_TOOLS = {"qemu-aarch64-static": "qemu-user-static", "mmdebstrap": "mmdebstrap"}
START_TIMEOUT_S = 120


class BoardUnavailable(KilnError):
    """The emulated board cannot be set up on this machine; the message says what is missing."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln" / "boards" / f"aarch64-{DEBIAN_RELEASE}"


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BoardUnavailable(f"{what} failed ({' '.join(command[:3])} ...): {(result.stderr or result.stdout).strip()[-600:]}")


def ensure_host_tools() -> None:
    missing = [package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BoardUnavailable(f"needs Debian packages {', '.join(missing)} (apt-get install {' '.join(missing)})")
    _say(f"apt-get install {' '.join(missing)}")
    _run(["apt-get", "install", "-y", "-q", *missing], "installing " + ", ".join(missing))


def _say(message: str) -> None:
    print(f"[board] {message}", file=sys.stderr, flush=True)


def prepare(folder: Path | None = None) -> Path:
    """The board's root filesystem, packages and Python wrapper; built once, then reused."""
    folder = folder or cache_dir()
    wrapper = folder / "python"
    if wrapper.is_file():
        return folder
    ensure_host_tools()
    folder.mkdir(parents=True, exist_ok=True)
    rootfs, site, wheels = folder / "rootfs", folder / "site-packages", folder / "wheels"
    if not (rootfs / "usr" / "bin" / f"python{BOARD_PYTHON}").exists():
        _say(f"arm64 {DEBIAN_RELEASE} root filesystem (mmdebstrap)")
        shutil.rmtree(rootfs, ignore_errors=True)
        _run(["mmdebstrap", "--variant=extract", "--architectures=arm64", "--include=python3,libstdc++6", DEBIAN_RELEASE, str(rootfs)], "mmdebstrap")
    _say("aarch64 wheels: " + ", ".join(BOARD_PACKAGES))
    platforms = [flag for p in WHEEL_PLATFORMS for flag in ("--platform", p)]
    common = ["--only-binary=:all:", "--python-version", BOARD_PYTHON, *platforms]
    _run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), *common, *BOARD_PACKAGES], "downloading the board's wheels")
    _run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site), *common, *map(str, wheels.glob("*.whl"))],
        "unpacking the board's wheels",
    )
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec qemu-aarch64-static -L "{rootfs}" -0 "{wrapper}" "{rootfs}/usr/bin/python{BOARD_PYTHON}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(process: subprocess.Popen, log: Path, marker: str, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if marker in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise BoardUnavailable(f"{what} did not start: {log.read_text(errors='replace')[-800:]}")


@dataclass
class Board:
    """Running RPC servers (and their tracker, if any); `stop()` ends them all."""

    address: str  # the server's, or the tracker's when there is one
    key: str | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        """Each server's whole process group: an RPC server runs its sessions in popen workers
        of its own, which outlived it (one emulated Python left running per board test)."""
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # a server that hung, and workers that outlived it
            process.wait()
            _wait_for_group(process.pid)


GROUP_EXIT_SECONDS = 5.0


def _wait_for_group(group: int) -> None:
    """Until no live process is left in process group `group` (at most GROUP_EXIT_SECONDS): a
    signal is delivered asynchronously, so a worker could still be running when its leader had
    been reaped and `stop` returned (a test found one there, once in three full runs)."""
    deadline = time.monotonic() + GROUP_EXIT_SECONDS
    while time.monotonic() < deadline and any(live_process_group(int(pid)) == group for pid in os.listdir("/proc") if pid.isdigit()):
        time.sleep(0.02)


def live_process_group(pid: int) -> int | None:
    """The process group of `pid` while it runs; None once it is gone or a zombie (a zombie
    reparented to a PID 1 that does not reap stays listed in /proc)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # state, parent, group, ...
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[2])


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """`signum` to the process group `process` leads (its servers start in sessions of their own)."""
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _server(folder: Path, port: int, tracker: str | None, key: str | None, log: Path) -> subprocess.Popen:
    command = [str(folder / "python"), "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)]
    if tracker:
        command += ["--tracker", tracker, "--key", key or "aarch64"]
    env = {**os.environ, "PYTHONPATH": str(folder / "site-packages"), "TVM_USE_RUNTIME_LIB": "1"}
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def start_server(port: int | None = None, folder: Path | None = None) -> Board:
    """One aarch64 RPC server on 127.0.0.1; connect to `board.address` ("host:port")."""
    folder = prepare(folder)
    port = port or free_port()
    log = folder / f"server-{port}.log"
    process = _server(folder, port, None, None, log)
    _wait_for(process, log, "bind to", "the aarch64 RPC server")
    return Board(f"127.0.0.1:{port}", processes=[process])


def start_tracker_with_servers(servers: int, key: str, port: int | None = None, folder: Path | None = None) -> Board:
    """TVM's RPC tracker on this machine with `servers` aarch64 servers registered under `key`."""
    folder = prepare(folder)
    port = port or free_port()
    log = folder / f"tracker-{port}.log"
    with log.open("w") as out:
        tracker = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    board = Board(f"127.0.0.1:{port}", key, [tracker])
    try:
        _wait_for(tracker, log, "bind to", "the RPC tracker")
        for _ in range(servers):
            server_port = free_port()
            server_log = folder / f"server-{server_port}.log"
            board.processes.append(_server(folder, server_port, board.address, key, server_log))
            _wait_for(board.processes[-1], server_log, "bind to", "an aarch64 RPC server")
        _wait_for_registration(board.address, key, servers)
    except BaseException:
        board.stop()
        raise
    return board


def _wait_for_registration(tracker: str, key: str, servers: int) -> None:
    from tvm import rpc

    host, port = tracker.rsplit(":", 1)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        summary = rpc.connect_tracker(host, int(port)).summary()
        free = sum(int(q.get("free", 0)) for k, q in summary.get("queue_info", {}).items() if k == key)
        if free >= servers:
            return
        time.sleep(1)
    raise BoardUnavailable(f"the {servers} aarch64 servers did not register with the tracker at {tracker} under '{key}'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=None, help="server port (or tracker port with --tracker)")
    parser.add_argument("--tracker", action="store_true", help="start TVM's RPC tracker and register the servers with it")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--key", default="rpi4")
    args = parser.parse_args(argv)
    try:
        board = start_tracker_with_servers(args.servers, args.key, args.port) if args.tracker else start_server(args.port)
    except BoardUnavailable as error:
        print(f"board unavailable: {error}", file=sys.stderr)
        return 2
    kind = f"tracker (key '{args.key}', {args.servers} servers)" if args.tracker else "RPC server"
    print(f"aarch64 {kind} at {board.address}; Ctrl-C stops it", flush=True)
    try:
        while all(p.poll() is None for p in board.processes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
