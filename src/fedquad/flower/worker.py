"""A long-lived per-node worker: the model and the tokens stay in memory between rounds.

Under the SuperNode's default isolation Flower starts a fresh ClientApp process for every message,
so each round would import torch and transformers and load the model again -- seconds that
dwarf a few local steps. With node_config `worker-socket=PATH` the ClientApp becomes a thin
relay (it imports Flower, never torch): it forwards the message's plan and the global adapter's
raw arrays to this worker over a Unix socket and sends back what the worker answers. The worker
runs the same functions as an in-process ClientApp (`fedquad.flower.nodework`), so results are
the same; only the process that holds the model differs.

Lifecycle. The device's operator starts it beside the SuperNode, with the SuperNode's
environment, and stops it with it:

    python -m fedquad.flower.worker --socket ~/.cache/fedquad/node/worker.sock &
    flower-supernode ... --node-config "data-path=... worker-socket=$HOME/.cache/fedquad/node/worker.sock"

It creates the socket (mode 0600) and an authentication key file `<socket>.key` (0600, a fresh
random key per start: only processes of the same user can connect), serves one request at a
time, and on SIGTERM / SIGINT removes both and exits. A socket left by a dead worker is replaced
at the next start. `--idle-exit-s` makes it exit after that long without a request.

Failure handling. A relay that cannot reach the worker (no socket, refused, wrong key) or loses
it mid-request (the worker crashed or was killed) runs the message in its own process instead --
slower, never wrong -- and says so in the reply's timing (`worker: "unreachable: ..."`). An
error the worker reports (unreadable data, a malformed message) is raised by the relay, so the
server records the node as failed for that round exactly as for an in-process error. Requests are
pickled: the socket is a trust boundary between processes of one user on one device, never a
network service.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from multiprocessing.connection import AuthenticationError, Client, Listener

from flwr.app import Array, ArrayRecord

KINDS = ("ping", "profile", "train", "evaluate")


def key_path(socket_path: str) -> str:
    return socket_path + ".key"


def record_to_wire(record: ArrayRecord) -> list[tuple]:
    """An ArrayRecord as plain tuples (no torch needed on either side)."""
    return [(key, a.dtype, list(a.shape), a.stype, a.data) for key, a in record.items()]


def wire_to_record(wire: list[tuple]) -> ArrayRecord:
    record = ArrayRecord()
    for key, dtype, shape, stype, data in wire:
        record[key] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data)
    return record


def ask(socket_path: str, request: dict) -> tuple[dict | None, str]:
    """(the worker's reply, "") or (None, why it could not be reached or was lost)."""
    path = os.path.abspath(os.path.expanduser(socket_path))
    try:
        with open(key_path(path), "rb") as f:
            key = f.read()
        conn = Client(path, family="AF_UNIX", authkey=key)
    except (OSError, EOFError, AuthenticationError) as exc:
        return None, f"unreachable: {type(exc).__name__}: {exc}"
    try:
        conn.send(request)
        return conn.recv(), ""
    except (OSError, EOFError) as exc:
        return None, f"lost mid-request: {type(exc).__name__}: {exc}"
    finally:
        conn.close()


def handle(request: dict) -> dict:
    """One request: {"kind", "node_config", and per kind "ins" / "run" / "calibrate" / "global"}."""
    from fedquad.flower.codec import record_to_state, state_to_record
    from fedquad.flower.nodework import evaluate_work, profile_report, train_work

    kind = request.get("kind")
    log = (lambda text: print(f"[fedquad worker {os.getpid()}] {text}", file=sys.stderr, flush=True))
    if kind == "ping":
        return {"result": {"pid": os.getpid()}}
    node_config = request["node_config"]
    if kind == "profile":
        return {"result": profile_report(node_config, request.get("run"), bool(request.get("calibrate", True)))}
    global_state, problems = record_to_state(wire_to_record(request["global"]))
    if problems:
        raise RuntimeError(f"malformed global adapter from the server: {problems[:3]}")
    if kind == "train":
        result, update = train_work(request["ins"], global_state, node_config, log)
        started = time.perf_counter()
        wire = None if update is None else record_to_wire(state_to_record(update))
        result["timing"]["upload_s"] = time.perf_counter() - started
        result["timing"]["handler_s"] += result["timing"]["upload_s"]
        return {"result": result, "update": wire}
    if kind == "evaluate":
        return {"result": evaluate_work(request["ins"], global_state, node_config, log)}
    raise ValueError(f"unknown request kind {kind!r}; expected one of {', '.join(KINDS)}")


def serve(socket_path: str, idle_exit_s: float | None = None) -> None:
    """Serve requests on `socket_path` until SIGTERM / SIGINT (or `idle_exit_s` without one)."""
    path = os.path.abspath(os.path.expanduser(socket_path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for stale in (path, key_path(path)):
        if os.path.exists(stale):
            os.unlink(stale)
    key = secrets.token_bytes(32)
    fd = os.open(key_path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)

    def stop(signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    old_umask = os.umask(0o177)  # the socket file: 0600
    try:
        listener = Listener(path, family="AF_UNIX", authkey=key)
    finally:
        os.umask(old_umask)
    if idle_exit_s:
        listener._listener._socket.settimeout(idle_exit_s)  # accept() raises socket.timeout when idle
    print(f"[fedquad worker {os.getpid()}] serving on {path}", file=sys.stderr, flush=True)
    try:
        while True:
            try:
                conn = listener.accept()
            except TimeoutError:
                print(f"[fedquad worker {os.getpid()}] idle for {idle_exit_s:.0f} s: exiting", file=sys.stderr)
                return
            except AuthenticationError:
                continue  # a client with the wrong key: ignore it
            with conn:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    continue
                try:
                    reply = handle(request)
                except Exception as exc:  # reported to the relay, which raises it as the node's error
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                try:
                    conn.send(reply)
                except (OSError, EOFError):
                    pass  # the relay went away (its ClientApp was stopped): nothing to answer
    finally:
        listener.close()
        for leftover in (path, key_path(path)):
            if os.path.exists(leftover):
                os.unlink(leftover)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedquad.flower.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="Unix socket path (node_config worker-socket)")
    parser.add_argument("--idle-exit-s", type=float, default=None, help="exit after this long without a request")
    args = parser.parse_args(argv)
    serve(args.socket, args.idle_exit_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
