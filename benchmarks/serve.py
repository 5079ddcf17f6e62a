"""What the resident engine server costs a client, against the in-process engine in the same run.

    python benchmarks/serve.py           # the demo model (SmolLM2-135M) on CPU
    python benchmarks/serve.py --tiny    # a tiny random model (smoke run)

Figures: the time a head toggle adds over the in-process engine (target <= 5 ms), the bytes a
toggle's answer takes on the socket (target <= 32 KiB), the toggle through a relay that slows the
socket to a forwarded SSH link (10 Mbit/s each way, 20 ms added each way), attach to first
prediction on a warm server including the client's imports (target <= 1.5 s), and time to the first
streamed cell of a head sweep. Toggles are timed alternately in-process and remote, so machine load
cancels out of the difference; both engines compute with the same number of threads. The toggle
asks for what the workbench's live run asks for (attention of one head, sinks, logit lens,
attribution, stats).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
THREADS = 1

ATTACH = """
import time
started = time.perf_counter()
from mechscope.serve import connect
from mechscope.engine.metric import Metric
engine = connect({socket!r})
result = engine.run({prompt!r}, metric=Metric("logit_diff", target=" Mary", foil=" John"))
print(time.perf_counter() - started, result.top[0].text)
"""


def start_server(model: str, socket_path: Path, env: dict[str, str]) -> subprocess.Popen:
    import socket

    proc = subprocess.Popen([sys.executable, "-m", "mechscope", "serve", "--model", model, "--device", "cpu",
                             "--dtype", "float32", "--socket", str(socket_path)],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(socket_path))
                return proc
            except OSError:
                time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start")


class Relay:
    """A Unix socket that forwards to another, as a slow link would: each direction sends at
    `rate_bps` and delivers each piece `latency_s` after it is sent. Counts the bytes each way."""

    def __init__(self, listen: Path, target: Path, rate_bps: float | None, latency_s: float) -> None:
        self.target, self.rate_bps, self.latency_s = target, rate_bps, latency_s
        self.down = self.up = 0  # bytes server -> client, client -> server
        self.lock = threading.Lock()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(listen))
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(self.target))
            self._pipe(client, upstream, "up")
            self._pipe(upstream, client, "down")

    def _pipe(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        pieces: queue.Queue[tuple[float, bytes] | None] = queue.Queue()

        def read() -> None:
            free_at = 0.0  # when the link has sent everything queued so far
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    with self.lock:
                        setattr(self, direction, getattr(self, direction) + len(data))
                    now = time.perf_counter()
                    free_at = max(now, free_at) + (len(data) * 8 / self.rate_bps if self.rate_bps else 0.0)
                    pieces.put((free_at + self.latency_s, data))
            pieces.put(None)

        def write() -> None:
            while (piece := pieces.get()) is not None:
                due, data = piece
                time.sleep(max(0.0, due - time.perf_counter()))
                try:
                    sink.sendall(data)
                except OSError:
                    break
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self.server.close()


def toggles(engine, requests) -> tuple[list[float], list[float]]:
    """(round-trip seconds, seconds the server computed) per request."""
    walls, computed = [], []
    for request in requests:
        started = time.perf_counter()
        outcome = engine.execute(request)
        walls.append(time.perf_counter() - started)
        computed.append(outcome.seconds)
        assert outcome.error is None, outcome.error
    return walls, computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the demo")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--relay-repeats", type=int, default=10)
    args = parser.parse_args()

    import torch

    from mechscope.engine.core import Engine
    from mechscope.engine.interventions import HeadAblation
    from mechscope.engine.metric import Metric
    from mechscope.engine.views import Views
    from mechscope.requests.kinds import RunRequest
    from mechscope.serve import connect

    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="mechscope-serve-bench-"))
    os.chmod(work, 0o700)
    model = "demo"
    if args.tiny:
        from mechscope.engine.testing import tiny_model, tiny_tokenizer

        model = str(work / "tiny")
        tiny_model("llama").save_pretrained(model)
        tiny_tokenizer().save_pretrained(model)
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MECHSCOPE_RUNTIME_DIR=str(work),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    socket_path = work / "bench.sock"
    server = start_server(model, socket_path, env)
    try:
        local = Engine.load(model, device="cpu", dtype="float32")
        remote = connect(socket_path, client_name="benchmark")
        info = local.info
        metric = Metric("logit_diff", target=" Mary", foil=" John")
        views = Views(attention=("L0.H0",), sinks=True, logit_lens=True, attribution=True, stats=True)
        print(f"model {info.name}: {info.n_layers} layers x {info.n_heads} heads, vocab {info.vocab_size}, "
              f"CPU {THREADS} threads")

        # toggles: each repeat ablates another head, so both engines recompute from that layer
        heads = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
        for engine in (local, remote):
            engine.run(CLEAN, views=views, metric=metric)
        local_times, remote_times, wire_times = [], [], []
        for i in range(args.repeats):
            layer, head = heads[(i * 7) % len(heads)]
            edits = [HeadAblation(layer, head)]
            started = time.perf_counter()
            local.run(CLEAN, edits, views=views, metric=metric)
            local_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            outcome = remote.execute(RunRequest(CLEAN, metric=metric, interventions=tuple(edits), views=views))
            remote_times.append(time.perf_counter() - started)
            wire_times.append(remote_times[-1] - outcome.seconds)  # all but the server's compute
        local_toggle, remote_toggle = statistics.median(local_times), statistics.median(remote_times)
        added = (remote_toggle - local_toggle) * 1000
        print(f"toggle in-process   {local_toggle * 1000:8.2f} ms")
        print(f"toggle via server   {remote_toggle * 1000:8.2f} ms  (+{added:.2f} ms, "
              f"{remote_toggle / local_toggle:.2f}x; target <= 5 ms)")
        print(f"  of which the wire (round trip minus the server's compute) "
              f"{statistics.median(wire_times) * 1000:.2f} ms; the server's compute "
              f"{statistics.median(r - w for r, w in zip(remote_times, wire_times)) * 1000:.2f} ms")

        # the same toggles through relays: one that only counts bytes, one as slow as an SSH link
        requests = [RunRequest(CLEAN, metric=metric, views=views,
                               interventions=(HeadAblation(*heads[(i * 5 + 3) % len(heads)]),))
                    for i in range(args.relay_repeats)]
        for label, rate, latency in (("socket", None, 0.0), ("10 Mbit/s, +20 ms each way", 10e6, 0.020)):
            relay_path = work / f"relay-{int(rate or 0)}.sock"
            relay = Relay(relay_path, socket_path, rate, latency)
            relayed = connect(relay_path, client_name="benchmark-relay")
            relayed.execute(requests[0])  # connected and warm
            before = relay.down, relay.up
            walls, computed = toggles(relayed, requests)
            down = (relay.down - before[0]) / len(requests)
            up = (relay.up - before[1]) / len(requests)
            if rate is None:
                print(f"toggle answer on the socket {down / 1024:8.1f} KiB (request {up / 1024:.1f} KiB; "
                      "target <= 32 KiB)")
            else:
                print(f"toggle via a {label} relay {statistics.median(walls) * 1000:8.1f} ms "
                      f"(server compute {statistics.median(computed) * 1000:.1f} ms)")
            relayed.close()
            relay.close()

        # the CPU work a toggle's answer costs on the wire: the server's encode, the client's decode
        from mechscope.requests.kinds import Outcome
        from mechscope.serve import codec
        from mechscope.serve.jobs import outcome_frame

        request = requests[0]
        result = local.run(CLEAN, request.interventions, views=views, metric=metric)
        codec_times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            frame, blobs = codec.unpack(outcome_frame(Outcome(request, result=result)))
            codec.outcome_from_dict(request, frame["outcome"], blobs)
            codec_times.append(time.perf_counter() - started)
        print(f"wire codec per toggle answer {statistics.median(codec_times) * 1000:6.2f} ms "
              f"(fastest {min(codec_times) * 1000:.2f} ms)")

        # attach on a warm server: a fresh interpreter importing the client, connecting, predicting
        attach, walls = [], []
        for _ in range(3):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", ATTACH.format(socket=str(socket_path), prompt=CLEAN)],
                                 env=env, cwd=REPO, capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - started)
            attach.append(float(out.stdout.split()[0]))
        print(f"attach -> first prediction {statistics.median(attach):6.3f} s inside the client "
              f"(imports + connect + run), {statistics.median(walls):.3f} s with interpreter start "
              "(target <= 1.5 s)")

        # head sweep: time to the first streamed cell (one layer of heads) and to the whole grid
        # head sweep: time to the first streamed cell (one layer of heads); then stop it
        from mechscope.engine.errors import Cancelled

        def first_cell(engine) -> float:
            started = time.perf_counter()
            first: list[float] = []
            try:
                engine.sweep("head", CLEAN, CORRUPT, metric,
                             on_progress=lambda _: first or first.append(time.perf_counter() - started),
                             should_stop=lambda: bool(first))
            except Cancelled:
                pass
            return first[0]

        for label, engine in (("in-process", local), ("via server", remote)):
            print(f"head sweep first cell {label} {first_cell(engine) * 1000:8.1f} ms")
        remote.close()
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
