"""Hostile clients against a real `python -m service`, with honest clients probing meanwhile.

Each attack runs for a while against the server with its default settings while an honest
client sends one cat photo to POST /detect every second. An attack passes when

- every attack request gets a 4xx problem+json (never a 5xx, never a dropped connection), and
  fast: within ATTACK_ANSWER_S of its last byte sent;
- during the attacks issue 14 names (PROBED: decode bombs, slow uploads, pixel bombs), slow
  heads and the connection flood, at least PROBE_SHARE of the honest probes get a 200 within the
  request deadline; the others report their probes too (a burst of honest requests may fairly fill
  max_inflight: a probe's 503 is the right answer there, and 16 cheap invalid uploads hold slots for
  a few hundred ms);
- the server's peak RSS (VmHWM) stays under --memory-limit-mb.

Attacks (each reproduces a finding of issue 14, or of a later review: slow-heads):
  decode-bomb     2 progressive 7000x7000 JPEGs whose last scan is repeated 1,500 times (~300 KB)
  slow-upload     32 connections sending a body at 2 bytes/s
  slow-heads      1000 connections trickling a request's headers a byte a second (slowloris)
  connection-flood 4000 connections holding a 15 KB partial head each, silent (memory: past max_connections
                  the connection longest without a request head is closed to make room, so honest
                  clients get in; until 2026-12-04 the newcomer got the 503 instead, honest ones too)
  pixel-bomb      8 concurrent RGBA PNGs of 7000x7000 (~200 KB each)
  webp-pixels     8 concurrent 24 MP WebPs of a cat photo (~200 KB each; Pillow's WebP decoder fills ~16
                  bytes a pixel: one took the server from 283 to 660 MiB, two at once past 1 GiB)
  big-heics       8 concurrent 24 MP HEICs of a cat photo (an iPhone's size; ~220 MiB each to decode):
                  honest, served one decode at a time inside the decode budget
  annotate-bomb   16 concurrent tiny truncated JPEGs declaring 7000x7000, to /annotate
  thin-annotate   a PNG of 16x3,000,000 to /annotate
  big-uploads     4 concurrent 19 MB uploads (bodies must not go to the 64 MiB /tmp)
  burst           64 concurrent honest /detect (memory)
  no-cat-burst    64 concurrent honest /detect of dog photos (no cat face: the most detector looks)
  many-faces      16 concurrent honest /detect of a photo of 20 cat faces (the largest model items)

    python benchmarks/attacks.py [--attack NAME ...] [--seconds 12] [--memory-limit-mb 1024]

Writes benchmarks/results/attacks-<date>.json. tests/test_attacks.py runs each in CI.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import sys
import time
import zlib
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image

from benchmarks.harness import HOST, REPO, Server, multipart, real_photos, request_bytes, send_once

# (the client opens thousands of connections too: the server's rule raises this process's open-file limit)
from service.__main__ import connections_that_fit

ATTACK_ANSWER_S = 5.0   # an attack is refused within this of its last byte
# honest clients must be served meanwhile
PROBED = {"decode-bomb", "slow-upload", "slow-heads", "connection-flood", "pixel-bomb", "webp-pixels", "big-heics"}
PROBE_SHARE = 0.9       # honest probes answered 200 within the deadline
PROBE_DEADLINE_S = 10.0  # the service's request deadline
RESULTS = REPO / "benchmarks" / "results"


# ---- the hostile payloads ---------------------------------------------------------------------
def decode_bomb(side: int = 7000, repeats: int = 1500) -> bytes:
    """A smooth progressive JPEG whose last (tiny) scan is repeated: each copy is another pass
    over every coefficient of the image."""
    gradient = np.linspace(60, 200, side // 8, dtype=np.float32)
    small = Image.fromarray(np.add.outer(gradient, gradient / 4).astype(np.uint8)).convert("RGB")
    out = io.BytesIO()
    small.resize((side, side), Image.BILINEAR).save(out, "JPEG", progressive=True, quality=70)
    data = out.getvalue()
    last_scan = data[data.rfind(b"\xff\xda"):-2]
    return data[:-2] + last_scan * repeats + b"\xff\xd9"


def _png(width: int, height: int, bit_depth: int, color_type: int, row_bytes: int) -> bytes:
    """A PNG of all-zero rows, compressed row by row (a bomb costs little to make)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + row_bytes)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, color_type, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def pixel_bomb(side: int = 7000) -> bytes:
    return _png(side, side, 8, 6, side * 4)  # RGBA: 196 MB of pixels in ~200 KB


def large_photo(photo: bytes, fmt: str, width: int, height: int) -> bytes:
    """A real cat photo enlarged to width x height and saved as `fmt` (WEBP, HEIF): a few hundred
    KB that the decoder expands to tens of megapixels (WebP's and HEIF's cannot decode smaller)."""
    out = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").resize((width, height), Image.BICUBIC).save(out, fmt, quality=60)
    return out.getvalue()


def thin_png(width: int = 16, height: int = 3_000_000) -> bytes:
    return _png(width, height, 1, 0, (width + 7) // 8)  # 1-bit grey: 48 megapixels, one pixel wide each row


def truncated_jpeg(side: int = 7000, keep: int = 692) -> bytes:
    """The first bytes of a big JPEG: a header declaring side x side, almost no data."""
    out = io.BytesIO()
    Image.new("RGB", (side, side), (120, 120, 120)).save(out, "JPEG", quality=50)
    return out.getvalue()[:keep]


def many_faces(photos: list[bytes], columns: int = 5, rows: int = 4, cell: int = 320) -> bytes:
    """A JPEG of columns x rows cat photos (centre squares): one honest photo of 20 cat faces,
    whose crops make one model item of 21 rows (the detector's max_faces, plus the photo)."""
    mosaic = Image.new("RGB", (columns * cell, rows * cell))
    for n in range(columns * rows):
        image = Image.open(io.BytesIO(photos[n % len(photos)])).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side)).resize((cell, cell))
        mosaic.paste(square, ((n % columns) * cell, (n // columns) * cell))
    out = io.BytesIO()
    mosaic.save(out, "JPEG", quality=90)
    return out.getvalue()


def big_upload(photo: bytes, size: int = 19 * 1024 * 1024) -> bytes:
    """A real JPEG padded after its end marker to `size` bytes (decoders stop at the marker)."""
    return photo + b"\x00" * (size - len(photo))


# ---- clients ----------------------------------------------------------------------------------
async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0"))) if "content-length" in headers else b""
    return int(status_line.split(" ", 2)[1]), headers, body


async def post(port: int, path: str, data: bytes, content_type: str = "image/jpeg", timeout: float = 60) -> dict:
    """One upload on its own connection: its status, type and seconds from the last byte sent."""
    raw = request_bytes("POST", path, data, content_type, {"Connection": "close"})
    started = time.perf_counter()
    try:
        status, headers, _ = await send_once(port, raw, timeout)
        return {"status": status, "type": headers.get("content-type", ""), "seconds": time.perf_counter() - started}
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        return {"status": None, "error": type(exc).__name__, "seconds": time.perf_counter() - started}


async def slow_upload(port: int, declared: int = 200_000, rate: float = 2.0, timeout: float = 60) -> dict:
    """Headers, then a body trickled at `rate` bytes/s until the server answers or closes."""
    head = request_bytes("POST", "/detect", b"", "image/jpeg").replace(
        b"Content-Length: 0", f"Content-Length: {declared}".encode())
    return await trickle(port, head, b"\xff\xd8"[: max(1, int(rate))], timeout)


async def slow_head(port: int, padding: int = 0, delay: float = 0.0, more: bytes = b"a", timeout: float = 60) -> dict:
    """After `delay` s, a request line and `padding` bytes of a header, then `more` each second
    (slowloris): the head never ends."""
    await asyncio.sleep(delay)
    return await trickle(port, f"POST /detect HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode() + b"a" * padding,
                         more, timeout)


async def trickle(port: int, first: bytes, each_second: bytes, timeout: float) -> dict:
    """`first`, then `each_second` every second until the server answers or closes."""
    reader, writer = await asyncio.open_connection(HOST, port)
    started = time.perf_counter()
    writer.write(first)
    answer = asyncio.ensure_future(_answer(reader))
    try:
        async with asyncio.timeout(timeout):
            while not answer.done():
                writer.write(each_second)
                await writer.drain()
                await asyncio.wait({answer}, timeout=1.0)
            status, headers, _ = answer.result()
        # The answer came while we were still sending: "seconds" counts from the last byte sent.
        return {"status": status, "type": headers.get("content-type", ""), "seconds": 0.0,
                "total_seconds": time.perf_counter() - started}
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        return {"status": None, "error": type(exc).__name__, "seconds": time.perf_counter() - started}
    finally:
        answer.cancel()
        writer.close()


async def probes(port: int, photo: bytes, stop: asyncio.Event) -> list[dict]:
    """An honest client: one /detect a second, each on its own connection, until `stop`."""
    body, content_type = multipart(photo)
    tasks = []
    while not stop.is_set():
        tasks.append(asyncio.ensure_future(post(port, "/detect", body, content_type, timeout=PROBE_DEADLINE_S + 5)))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    return list(await asyncio.gather(*tasks))


# ---- one attack -------------------------------------------------------------------------------
def attack_jobs(name: str, port: int, photos: list[bytes]):
    """(coroutines of the attack, whether its requests must be refused with a 4xx)."""
    jpeg = "image/jpeg"
    if name == "decode-bomb":
        bomb = decode_bomb()
        return [post(port, "/detect", bomb, jpeg) for _ in range(2)], True
    if name == "slow-upload":
        return [slow_upload(port) for _ in range(32)], True
    if name == "slow-heads":
        return [slow_head(port) for _ in range(connections_that_fit(SLOW_HEADS))], True
    if name == "connection-flood":
        # Opened at FLOOD_RATE a second: thousands of connects at one instant overflow the kernel's
        # listen queue, whose resets say nothing about the service. Each holds its partial head
        # and sends nothing more (slow-heads trickles): a refused one that kept writing after the
        # server's close would be reset, and a client starved of CPU could lose its 503 with it.
        return [slow_head(port, padding=15_000, delay=i / FLOOD_RATE, more=b"")
                for i in range(connections_that_fit(FLOOD))], True
    if name == "pixel-bomb":
        bomb = pixel_bomb()
        return [post(port, "/detect", bomb, "image/png") for _ in range(8)], True
    if name == "webp-pixels":
        webp = large_photo(photos[0], "WEBP", 5712, 4284)
        return [post(port, "/detect", webp, "image/webp") for _ in range(8)], True
    if name == "big-heics":
        heic = large_photo(photos[1], "HEIF", 5712, 4284)
        return [post(port, "/detect", heic, "image/heic") for _ in range(8)], False
    if name == "annotate-bomb":
        bomb = truncated_jpeg()
        return [post(port, "/annotate", bomb, jpeg) for _ in range(16)], True
    if name == "thin-annotate":
        return [post(port, "/annotate", thin_png(), "image/png")], True
    if name == "big-uploads":
        return [post(port, "/detect", big_upload(photos[i]), jpeg) for i in range(4)], False
    if name == "burst":
        bodies = [multipart(photos[i % CATS]) for i in range(64)]
        return [post(port, "/detect", b, t) for b, t in bodies], False
    if name == "no-cat-burst":  # photos without a cat face ask for the most detector looks each
        bodies = [multipart(photos[CATS + i % (len(photos) - CATS)]) for i in range(64)]
        return [post(port, "/detect", b, t) for b, t in bodies], False
    if name == "many-faces":
        body, content_type = multipart(many_faces(photos[:CATS]))
        return [post(port, "/detect", body, content_type) for _ in range(16)], False
    raise ValueError(f"unknown attack {name!r}")


ATTACKS = ["decode-bomb", "slow-upload", "slow-heads", "connection-flood", "pixel-bomb", "webp-pixels", "big-heics",
           "annotate-bomb", "thin-annotate", "big-uploads", "burst", "no-cat-burst", "many-faces"]
CATS = 8  # the photos are CATS cat photos, then dog photos
SLOW_HEADS = 1000  # connections trickling a head: each held a file descriptor for ever before the head deadline
FLOOD = 4000       # connections holding a 15 KB partial head each: twice the shipped max_connections
FLOOD_RATE = 2000  # connections opened a second


async def _run_attack(server: Server, name: str, seconds: float, photos: list[bytes]) -> dict:
    stop = asyncio.Event()
    probing = asyncio.ensure_future(probes(server.port, photos[0], stop))
    await asyncio.sleep(1.0)
    jobs, refused = attack_jobs(name, server.port, photos)
    started = time.perf_counter()
    results = await asyncio.gather(*jobs)
    attack_seconds = time.perf_counter() - started
    await asyncio.sleep(max(0.0, seconds - attack_seconds))
    stop.set()
    probe_results = await probing
    ok_probes = [p for p in probe_results if p["status"] == 200 and p["seconds"] <= PROBE_DEADLINE_S]
    statuses = sorted({str(r["status"]) for r in results})
    problems = []
    for r in results:
        # an honest burst past max_inflight, or a flood past max_connections: a fair answer
        overloaded = r["status"] == 503 and (not refused or name == "connection-flood")
        if r["status"] is None or (r["status"] >= 500 and not overloaded):
            problems.append(f"attack request answered {r['status']} ({r.get('error', '')})")
        elif refused and not ((400 <= r["status"] < 500 or overloaded)
                              and r["type"].startswith("application/problem+json")):
            problems.append(f"attack request answered {r['status']} {r['type']}, expected a 4xx problem+json")
        elif refused and r["seconds"] > ATTACK_ANSWER_S:
            problems.append(f"attack refused after {r['seconds']:.1f} s")
    share = len(ok_probes) / max(len(probe_results), 1)
    if share < PROBE_SHARE and name in PROBED:
        problems.append(f"only {len(ok_probes)} of {len(probe_results)} honest probes answered 200 in time")
    slowest = max((r["seconds"] for r in results), default=0.0)
    missed = [f"{p['status']} in {p['seconds']:.1f} s" for p in probe_results if p not in ok_probes]
    return {"attack": name, "requests": len(results), "statuses": statuses, "slowest_answer_s": round(slowest, 2),
            "probes": len(probe_results), "probes_ok": len(ok_probes), "probes_missed": missed,
            "problems": sorted(set(problems))}


def run(attacks: list[str], seconds: float = 12, memory_limit_mb: float = 1024, env: dict | None = None,
        log_path: Path | None = None) -> dict:
    """Every attack in turn against one server; the report says what passed."""
    photos = [data for _, data in real_photos(cats=CATS, dogs=8)]
    reports = []
    with Server(env or {}, log_path=log_path) as server:
        idle_rss = server.rss()
        for name in attacks:
            report = asyncio.run(_run_attack(server, name, seconds, photos))
            report["peak_rss_mb"] = round(server.peak_rss() / 2**20, 1)
            if report["peak_rss_mb"] > memory_limit_mb:
                report["problems"].append(f"peak RSS {report['peak_rss_mb']} MB over {memory_limit_mb} MB")
            if server.process.poll() is not None:
                report["problems"].append(f"the server exited with {server.process.returncode}")
            reports.append(report)
            print(json.dumps(report), flush=True)
            if server.process.poll() is not None:
                break
        exit_code = server.stop()
    return {"date": datetime.date.today().isoformat(), "idle_rss_mb": round(idle_rss / 2**20, 1),
            "exit_code": exit_code, "attacks": reports,
            "passed": exit_code == 0 and all(not r["problems"] for r in reports)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", nargs="*", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--memory-limit-mb", type=float, default=1024)
    args = parser.parse_args(argv)
    report = run(args.attack, args.seconds, args.memory_limit_mb)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"attacks-{report['date']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'passed' if report['passed'] else 'FAILED'}; idle RSS {report['idle_rss_mb']} MB; wrote {path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
