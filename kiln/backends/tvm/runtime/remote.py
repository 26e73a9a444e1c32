"""Running a compiled module on a board through TVM RPC: upload the shared library to the board's
RPC server (`python -m tvm.exec.rpc_server`), run it there, bring the outputs back as torch tensors.

Over RPC the Relax VM is driven through `set_input` / `invoke_stateful` / `get_outputs`: a tuple
returned by `vm["main"]` is not subscriptable from the client side.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
import tvm
from tvm import relax, rpc

from kiln.backends.tvm.runtime.executable import TVMExecutable
from kiln.errors import TargetError

SESSION_TIMEOUT_S = 600  # a session under emulation is slow; a stuck one still ends


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TargetError(f"an RPC address is 'host:port', got {address!r}")
    return host, int(port)


class OpenRPCAddressWarning(UserWarning):
    """An RPC server reached over a public address: TVM's RPC has no authentication."""


def public_addresses(host: str) -> list[str]:
    """The addresses `host` resolves to that are neither loopback nor a private range (what a
    stranger on the network could also reach); a name that does not resolve is left to connect."""
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return []
    return sorted(a for a in resolved if not _is_local(ipaddress.ip_address(a.split("%")[0])))


def _is_local(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_loopback or address.is_private or address.is_link_local


def warn_if_public(address: str) -> None:
    host, _ = parse_address(address)
    public = public_addresses(host)
    if public:
        warnings.warn(
            f"the RPC server at {address} ({', '.join(public)}) is on a public address: TVM's RPC server runs "
            f"whatever module it is sent and has no authentication. Bind it to a private interface or reach it "
            f"through an SSH tunnel (see the README's 'Trust and security').",
            OpenRPCAddressWarning, stacklevel=3,
        )


def connect(address: str) -> rpc.RPCSession:
    host, port = parse_address(address)
    warn_if_public(address)
    try:
        return rpc.connect(host, port, session_timeout=SESSION_TIMEOUT_S)
    except (RuntimeError, OSError) as error:  # TVM raises RuntimeError subclasses
        raise TargetError(f"no TVM RPC server answers at {address}: {str(error).splitlines()[0]}") from error


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith(("Traceback", "  File"))]
    return lines[-1] if lines else type(error).__name__


class RemoteExecutable:
    """A module loaded on a board. Inputs travel to the board and outputs back (host copies)."""

    def __init__(self, executable: TVMExecutable, address: str) -> None:
        self.built = executable
        self.address = address
        self.session = connect(address)
        library = executable.shared_library_bytes()
        name = f"kiln_{hashlib.sha256(library).hexdigest()[:16]}.so"
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(library)
            self.session.upload(str(path))
        try:
            loaded = self.session.load_module(name)
        except RuntimeError as error:
            target = executable.target
            raise TargetError(
                f"the board at {address} refused this module, built for target '{target.name}' "
                f"({target.architecture}): {_first_line(error)}. Compile for the board's target (see `kiln targets`)."
            ) from error
        self.device = self.session.cuda(0) if executable.target.device == "cuda" else self.session.cpu(0)
        self.vm = relax.VirtualMachine(loaded, self.device)
        # copied to the board once; every call passes them after the inputs
        self.weights = [tvm.runtime.tensor(weight.numpy(), device=self.device) for weight in executable.weights]

    def _set_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        arrays = [tvm.runtime.tensor(t.detach().cpu().contiguous().numpy(), device=self.device) for t in inputs]
        self.vm.set_input("main", *arrays, *self.weights)

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._set_inputs(inputs)
        self.vm.invoke_stateful("main")
        outputs = self.vm.get_outputs("main")
        flat = [outputs] if isinstance(outputs, tvm.runtime.Tensor) else list(outputs)
        return self.built.checked([torch.from_numpy(t.numpy()) for t in flat])

    def median_seconds(self, inputs: Sequence[torch.Tensor], repeat: int) -> float:
        """Timed on the board by TVM's time evaluator: the network is not in the figure."""
        self._set_inputs(inputs)
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=1, repeat=repeat)
        return float(timer("main").median)

    def save(self, folder: Path) -> None:
        self.built.save(folder)
