"""Shell scripts run on a builder, their answer framed in named sections.

nixdist asks builders things with POSIX ``sh`` scripts over their pooled ssh connection: the
hook's load probe (`nixdist.transport.probe`) and ``nixdist check``'s questions
(`nixdist.transport.check_script`). A login shell may print anything first (a banner, a
``~/.bashrc`` that echoes), so each command's answer is framed by marker lines::

    <what the shell printed first: the noise>
    @@nixdist begin NAME
    <the command's stdout and stderr, exactly>
    @@nixdist end NAME STATUS

`frame` renders one section (the command in a ``{ …; }`` group, its exit status in the end
marker), `render_script` a script of sections. `parse_output` splits an answer: what precedes
the first marker is noise, a section whose end marker never came (cut short) is dropped. Each
marker is printed after a newline of its own, so the text of a section (and the noise) is
exactly what was printed, with or without a final newline.

`run_script` runs a script on a builder over its control master with bounds on both what it
reads and how long it waits: at most `limit` bytes of stdout and of stderr, and `timeout`
seconds; past either the script is stopped, the sections that came are kept, and
`ScriptOutput.error` says what was cut or what was still awaited. A builder that cannot be
reached is the only error raised (`TransportError`).

Scripts are built from constants and words quoted with `shlex.quote`: nothing from a machines
file is ever put into them, and section names are checked (`frame`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from nixdist.errors import TransportError
from nixdist.transport.openssh import ssh_environment

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from nixdist.transport.openssh import ControlMasters, SshTarget

MARKER: Final = "@@nixdist"
_NAME: Final = r"[a-z][a-z0-9-]*"
_MARKER_LINE: Final = re.compile(
    rf"{re.escape(MARKER)} (?:begin ({_NAME})|end ({_NAME}) ([0-9]{{1,3}}))"
)
#: What a script may print (stdout, and stderr apart) unless its caller allows more.
DEFAULT_LIMIT: Final = 64 * 1024
#: ssh's exit status when it could not connect (anything else is the remote command's).
_SSH_FAILED: Final = 255
_READ_SIZE: Final = 64 * 1024

# ---------------------------------------------------------------------------------------
# The format (pure)


def frame(name: str, command: str) -> str:
    """One section: the shell line that prints `command`'s output (stdout and stderr)
    between ``begin name`` and ``end name STATUS`` markers."""
    if not re.fullmatch(_NAME, name):
        raise ValueError(f"not a section name: {name!r}")
    return (
        f"printf '\\n{MARKER} begin {name}\\n'; {{ {command}\n}} 2>&1; "
        f"printf '\\n{MARKER} end {name} %s\\n' \"$?\"\n"
    )


def render_script(sections: Iterable[tuple[str, str]]) -> str:
    """A script of `sections` (name, command) run one after the other."""
    return "".join(frame(name, command) for name, command in sections)


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    status: int  # the command's exit status
    text: str  # its stdout and stderr, exactly as printed


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptOutput:
    """What a script printed: the noise before its first section, then each section."""

    noise: str = ""
    sections: Mapping[str, Section] = field(default_factory=dict)
    #: A section that began but did not end: where the script was cut or stopped.
    unfinished: str | None = None
    #: Why the run did not end well, in words (stopped, cut, failed); "" when it did.
    error: str = ""


def parse_output(text: str) -> ScriptOutput:
    """Split a script's output into noise and sections; a section without its end marker
    (cut short, or interrupted by another's begin) is dropped. Never raises."""
    noise: list[str] = []
    started = False
    sections: dict[str, Section] = {}
    current: tuple[str, list[str]] | None = None
    for line in text.split("\n"):
        match = _MARKER_LINE.fullmatch(line)
        if match is None:
            if current is not None:
                current[1].append(line)
            elif not started:
                noise.append(line)
        elif match[1] is not None:  # begin
            started, current = True, (match[1], [])
        elif current is not None and current[0] == match[2]:  # its end
            sections[current[0]] = Section(status=int(match[3]), text="\n".join(current[1]))
            current = None
    return ScriptOutput(
        noise="\n".join(noise),
        sections=sections,
        unfinished=current[0] if current is not None else None,
    )


# ---------------------------------------------------------------------------------------
# Running a script on a builder (I/O)

_Stop = Literal["done", "timeout", "cut"]


def run_script(
    target: SshTarget,
    masters: ControlMasters,
    environ: Mapping[str, str],
    script: str,
    *,
    what: str,
    timeout: float,
    limit: int = DEFAULT_LIMIT,
) -> ScriptOutput:
    """Run `script` under ``sh`` on `target` over its control master (started if needed) and
    parse its output; `what` names it in errors ("the load probe").

    At most `limit` bytes of stdout (and of stderr) are read, within `timeout` seconds; past
    either the script is killed and `ScriptOutput.error` says so, as it does when the script
    exits non-zero. Raises `TransportError` only when the builder cannot be reached: the
    master cannot start, ssh cannot run or cannot connect (exit status 255).
    """
    use_master = masters.ensure_master(target, environ)
    argv = masters.command_argv(target, shlex.join(["sh", "-c", script]), use_master=use_master)
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ssh_environment(environ),
        )
    except OSError as err:
        raise TransportError(f"cannot run ssh: {err}") from err
    with proc:  # closes the pipes and reaps ssh, killed first unless it ended
        try:
            out, err_bytes, stop = _read_bounded(proc, deadline=deadline, limit=limit)
            if stop == "done" and not _ended_by(proc, deadline):
                stop = "timeout"  # its output ended, but it did not
        finally:
            if proc.poll() is None:
                proc.kill()
    said = err_bytes.decode(errors="replace").strip().splitlines()
    output = parse_output(out.decode(errors="replace"))
    if stop == "timeout":
        error = f"{what} did not finish within {timeout:g} seconds ({_awaited(output)})"
    elif stop == "cut":
        error = f"{what} printed more than {limit} bytes; the rest was not read"
    elif proc.returncode == _SSH_FAILED:
        raise TransportError(f"cannot reach '{target.host}': {said[-1] if said else 'ssh failed'}")
    elif proc.returncode != 0:
        error = f"{what} failed: {said[-1] if said else f'exit status {proc.returncode}'}"
    else:
        return output
    return dataclasses.replace(output, error=error)


def _awaited(output: ScriptOutput) -> str:
    """What a stopped script was still doing, in words."""
    if output.unfinished is not None:
        return f"still in its {output.unfinished} section"
    if output.sections:
        return f"after its {list(output.sections)[-1]} section"
    return "no section had begun"


def _ended_by(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether `proc` exits before `deadline`."""
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def _read_bounded(
    proc: subprocess.Popen[bytes], *, deadline: float, limit: int
) -> tuple[bytes, bytes, _Stop]:
    """Stdout and stderr of `proc` until both close ("done"), the deadline passes
    ("timeout") or one of them has more than `limit` bytes ("cut": the excess is dropped)."""
    assert proc.stdout is not None  # noqa: S101 - Popen with PIPE guarantees them
    assert proc.stderr is not None  # noqa: S101
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    received = {out_fd: bytearray(), err_fd: bytearray()}
    open_fds = {out_fd, err_fd}
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(received[out_fd]), bytes(received[err_fd]), "timeout"
        ready, _, _ = select.select(list(open_fds), [], [], left)
        for fd in ready:
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                open_fds.discard(fd)
                continue
            room = limit - len(received[fd])
            received[fd] += chunk[:room]
            if len(chunk) > room:
                return bytes(received[out_fd]), bytes(received[err_fd]), "cut"
    return bytes(received[out_fd]), bytes(received[err_fd]), "done"
