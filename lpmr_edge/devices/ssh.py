"""A device reached with the system OpenSSH client, with the user's own keys, agent and ~/.ssh/config.

Host keys are checked as the user's ssh configuration says (an unknown or changed key is an error,
never silently accepted); BatchMode makes a missing key or passphrase an error instead of a prompt;
keep-alives notice a dropped connection. The remote command is ``exec``'d so that it is the session's
only process: when the channel drops, the device server's supervisor ends it.
"""
from __future__ import annotations

import shlex
from urllib.parse import SplitResult

from lpmr_edge.devices.base import Device, parse_options
from lpmr_edge.errors import UserError

SSH_FAILED = 255
SSH_OPTIONS = ("-T", "-e", "none", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=10",
               "-o", "ServerAliveCountMax=3", "-o", "ClearAllForwardings=yes", "-o", "ForwardAgent=no",
               "-o", "ForwardX11=no")
LOST = "the connection to the device was lost"
SSH_PROBLEMS = (
    ("host key verification failed",
     "its host key is unknown or changed: check its fingerprint, then accept it once with `ssh -p PORT USER@HOST`"),
    ("permission denied",
     "the SSH login was refused: install your public key there (ssh-copy-id) or load it into ssh-agent"),
    ("connection refused", "nothing listens for SSH there: start sshd on the device or fix the port"),
    ("could not resolve hostname", "the host name does not resolve: check it or add it to ~/.ssh/config"),
    ("timed out", "the device did not answer: check that it is on and reachable"),
    ("not responding", f"{LOST}: the device stopped answering keep-alives"),
    ("no route to host", "the device is unreachable: check the network"),
    ("closed by remote host", LOST),
    ("broken pipe", LOST),
    ("connection reset", LOST),
)


def remote_word(arg: str) -> str:
    """``arg`` quoted for the remote shell, a leading ``~/`` still meaning the remote home."""
    return f'"$HOME"/{shlex.quote(arg[2:])}' if arg.startswith("~/") else shlex.quote(arg)


class SshDevice(Device):
    """A board or server reached as ``ssh [-p port] [-F config] [user@]host``."""

    kind = "ssh"
    options = ("python", "workdir", "config", "runner")

    @classmethod
    def from_spec(cls, spec: str, parts: SplitResult) -> SshDevice:
        try:
            port = parts.port
        except ValueError:
            raise UserError(f"bad port in device '{spec}'; use ssh://user@host:22") from None
        if not parts.hostname:
            raise UserError(f"device '{spec}' names no host; use ssh://user@host[:port]")
        return cls(parts.hostname, user=parts.username, port=port, **parse_options(spec, parts.query, cls.options))

    def __init__(self, host: str, user: str | None = None, port: int | None = None, python: str | None = None,
                 workdir: str | None = None, config: str | None = None, runner: str | None = None) -> None:
        super().__init__(workdir=workdir, python=python, runner=runner)
        self.host, self.user, self.port, self.config = host, user, port, config

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def label(self) -> str:
        return f"ssh://{self.destination}" + (f":{self.port}" if self.port else "")

    def command(self, argv: list[str]) -> list[str]:
        return ["ssh", *SSH_OPTIONS, *(["-p", str(self.port)] if self.port else []),
                *(["-F", self.config] if self.config else []), self.destination, "--",
                "exec " + " ".join(remote_word(arg) for arg in argv)]

    def explain(self, returncode: int, stderr: str) -> str:
        if returncode < 0:
            return f"{LOST}: the ssh client was killed by signal {-returncode}"
        if returncode != SSH_FAILED:
            return super().explain(returncode, stderr)
        for said in reversed(stderr.strip().splitlines()):  # ssh's own words among the device server's
            for pattern, meaning in SSH_PROBLEMS:
                if pattern in said.lower():
                    return f"{meaning} (ssh: {said})"
        return f"{LOST} (ssh ended without a message)"
