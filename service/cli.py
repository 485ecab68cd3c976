"""`catface`: the models over photo files and folders, one JSON line per photo.

    catface detect photos/ --out faces.jsonl
    catface breeds cat.heic
    catface annotate photos/ --sticker glasses --out-dir decorated/
    catface detect photos/ --url http://localhost:8000 --jobs 8     # a running service does the work

In-process (the default) the bundled models run here, and every file goes through the service's
own intake (service.imaging: same formats, byte and pixel limits, orientation, decode budget), so a file
gets the answer the service would give it. With --url each file is POSTed to the service instead
(stdlib HTTP only; 503 answers are retried after their Retry-After).

Every file named, and every photo file found in a folder (by extension, recursively, hidden ones
left out), gets exactly one line in input order: the answer, or `"error": {status, type, detail}`.
Files in folders that are not photos by name are counted on stderr, not silently dropped.
In-process, `--jobs` threads read and decode while this thread runs the models (which use all
cores themselves); with --url it is the number of requests in flight.

One module over 400 lines on purpose: the command's argument parsing, its two engines (Local
in-process, Remote over HTTP) and its output are one concept a reader follows top to bottom.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from . import __version__, annotate, imaging
from .config import Settings
from .problems import Problem
from .schemas import DetectResponse, breeds_response, face_out
from .stickers import Sticker

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
RETRIES = 5  # per file, on 503 from a busy service
FORMATS = {"jpeg": ("image/jpeg", ".jpg"), "png": ("image/png", ".png")}  # what annotate writes
BATCH = 8  # detect: decoded photos run through the models together, up to this many

EPILOG = f"""\
what goes in:
  files and folders; folders are searched recursively for {", ".join(imaging.EXTENSIONS)}
  (any letter case). Each photo goes through the same limits as an upload to the service.

what comes out:
  one JSON line per photo, in input order, to --out (default: stdout):
    detect    {{"file", "width", "height", "faces": [{{"box", "score", "landmarks", "breeds"}}]}}
    breeds    {{"file", "cat", "faces", "breeds": [{{"breed", "score"}}]}}
    annotate  {{"file", "out", "faces", "stickers"}}, and the drawn photo in --out-dir
  a file that cannot be answered gets {{"file", "error": {{"status", "type", "detail"}}}}.
  Progress and a summary go to stderr (the progress line only on a terminal, or with --progress).

exit status:
  0 every photo answered   1 some files got an error line   2 bad usage or no photo found
  3 the models could not be loaded, or the service at --url did not answer

examples:
  catface detect photos/ --out faces.jsonl
  catface annotate photos/ --sticker glasses --out-dir decorated/
  catface detect IMG_0001.HEIC --url http://localhost:8000
"""


@dataclass
class Job:
    path: Path
    root: Path | None  # the folder it was found in (for the path under --out-dir), None if named


# ---- finding the photos ----------------------------------------------------------------------
def find_photos(paths: list[str]) -> tuple[list[Job], list[Path]]:
    """Named files as they are (any extension), folders searched for photo extensions.
    Returns the jobs and the files in folders left out as not photos by name."""
    jobs, skipped = [], []
    for name in paths:
        path = Path(name)
        if not path.is_dir():
            jobs.append(Job(path, None))  # missing or unreadable: its line says so
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in sorted(files):
                if file.startswith("."):
                    continue
                if file.lower().endswith(imaging.EXTENSIONS):
                    jobs.append(Job(Path(folder) / file, path))
                else:
                    skipped.append(Path(folder) / file)
    return jobs, skipped


def error_line(status: int | None, kind: str, detail: str) -> dict:
    return {"error": {"status": status, "type": kind, "detail": detail}}


def problem_line(problem: Problem) -> dict:
    return error_line(problem.status, problem.slug, problem.detail)


def out_path(job: Job, out_dir: Path, suffix: str, taken: set[Path]) -> Path:
    """Where the drawn photo goes: its path under the folder it came from, with the new suffix;
    `a.png` beside `a.jpg` becomes `a-png.jpg` rather than overwrite it."""
    relative = job.path.relative_to(job.root) if job.root else Path(job.path.name)
    target = out_dir / relative.with_suffix(suffix)
    if target in taken:
        target = out_dir / relative.with_name(f"{relative.stem}-{relative.suffix.lstrip('.')}{suffix}")
    n = 2
    while target in taken:
        target = target.with_name(f"{relative.stem}-{n}{suffix}")
        n += 1
    taken.add(target)
    return target


# ---- progress --------------------------------------------------------------------------------
class Progress:
    """`  37/100 photos  24.1/s  1 error  eta 3s` on stderr: redrawn in place on a terminal, a
    line every few seconds otherwise (when asked for with --progress)."""

    def __init__(self, total: int, stream: TextIO, show: bool):
        self.total, self.stream, self.show = total, stream, show
        self.tty = stream.isatty()
        self.done = self.errors = self.faces = 0
        self.start = self.last = time.monotonic()

    def text(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.done / elapsed
        eta = f"  eta {(self.total - self.done) / rate:.0f}s" if rate > 0 and self.done < self.total else ""
        errors = f"  {self.errors} error{'s' if self.errors != 1 else ''}" if self.errors else ""
        width = 24
        filled = width * self.done // max(self.total, 1)
        return f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} photos  {rate:.1f}/s{errors}{eta}"

    def update(self, line: dict) -> None:
        self.done += 1
        self.errors += "error" in line
        faces = line.get("faces")
        self.faces += len(faces) if isinstance(faces, list) else (faces or 0)
        if not self.show:
            return
        now = time.monotonic()
        if self.tty and (now - self.last >= 0.1 or self.done == self.total):
            self.stream.write("\r" + self.text() + "\x1b[K")
            self.stream.flush()
            self.last = now
        elif not self.tty and (now - self.last >= 2 or self.done == self.total):
            self.stream.write(self.text() + "\n")
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        if self.show and self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()


# ---- in-process ------------------------------------------------------------------------------
class Local:
    """The bundled models in this process; files through service.imaging like uploads."""

    def __init__(self, settings: Settings):
        from .pipeline import load  # onnxruntime is only loaded when the models are used here

        imaging.configure(settings.max_pixels)
        self.settings = settings
        self.catface = load(settings.models_dir, settings.threads or None)
        self.names = self.catface.landmarker.entry["landmark_names"]
        # The --jobs threads' decodes share the service's decode budget (max_decode_bytes, each its
        # Header.needed), as uploads do: eight large photos at once must not take eight times it.
        self._decoding = threading.Condition()
        self._decoding_bytes = 0

    def intake(self, job: Job, keep_original: bool) -> imaging.Photo | dict:
        """Read and decode one file (on a worker thread): the photo, or its error line."""
        limit = self.settings.max_body_bytes
        try:
            size = job.path.stat().st_size
            if size > limit:
                return error_line(413, "image-too-large", f"the file is {size} bytes; the limit is {limit}")
            data = job.path.read_bytes()
        except OSError as exc:
            return error_line(None, "unreadable-file", exc.strerror or str(exc))
        try:
            header = imaging.read_header(data, **self.settings.decode_limits(keep_original))
            self._enter(header.needed)
            try:
                return imaging.decode_pixels(header)
            finally:
                self._leave(header.needed)
        except Problem as problem:
            return problem_line(problem)

    def _enter(self, n: int) -> None:
        """Wait until n more decode bytes fit in the budget (or none are in use: alone, a photo
        over the budget was already refused by read_header)."""
        with self._decoding:
            self._decoding.wait_for(lambda: not self._decoding_bytes
                                    or self._decoding_bytes + n <= self.settings.max_decode_bytes)
            self._decoding_bytes += n

    def _leave(self, n: int) -> None:
        with self._decoding:
            self._decoding_bytes -= n
            self._decoding.notify_all()

    def detect(self, photos: list[imaging.Photo]) -> list[list]:
        """Faces of each photo in its original pixels; the photos run through the models together."""
        found = self.catface.detect([photo.image for photo in photos]) if photos else []
        return [[face.scaled(*photo.scale) for face in faces] for photo, faces in zip(photos, found)]

    def breeds(self, photo: imaging.Photo) -> dict:
        (result,) = self.catface.classify([photo.image])
        return breeds_response(result).model_dump()

    def run(self, args, jobs: list[Job], emit: Callable[[Job, dict], None]) -> None:
        """Decoding on `args.jobs` threads, a few photos ahead, while this thread runs the models;
        for annotate, drawing and writing go back to the threads. Lines come out in input order."""
        keep = args.command == "annotate"
        taken: set[Path] = set()
        with ThreadPoolExecutor(args.jobs, thread_name_prefix="catface-io") as pool:
            ahead: deque[tuple[Job, Future]] = deque()
            finishing: deque[tuple[Job, Future]] = deque()
            queue = iter(jobs)

            def top_up():
                while len(ahead) < max(2 * args.jobs, 2 * BATCH) and (job := next(queue, None)) is not None:
                    ahead.append((job, pool.submit(self.intake, job, keep)))

            def flush(wait: bool):
                while finishing and (wait or finishing[0][1].done()):
                    job, future = finishing.popleft()
                    emit(job, future.result())

            top_up()
            while ahead:
                # detect: the photos already decoded go through the models together (as the
                # in-process ceiling does), at most BATCH at a time, never waiting for more.
                group = [ahead.popleft()]
                while args.command == "detect" and ahead and len(group) < BATCH and ahead[0][1].done():
                    group.append(ahead.popleft())
                top_up()
                decoded = [(job, future.result()) for job, future in group]
                photos = [photo for _, photo in decoded if not isinstance(photo, dict)]
                found = iter(self.detect(photos) if args.command == "detect" else [])
                for job, photo in decoded:
                    result: Future[dict] = Future()
                    if isinstance(photo, dict):
                        result.set_result(photo)
                    elif args.command == "detect":
                        faces = next(found)
                        result.set_result(DetectResponse(width=photo.width, height=photo.height,
                                                         faces=[face_out(f, self.names) for f in faces]).model_dump())
                    elif args.command == "breeds":
                        result.set_result(self.breeds(photo))
                    else:
                        (faces,) = self.detect([photo])
                        media_type, suffix = FORMATS[args.format]
                        target = out_path(job, args.out_dir, suffix, taken)
                        result = pool.submit(self.draw, photo, faces, args.sticker, media_type, target)
                    finishing.append((job, result))
                flush(wait=False)
            flush(wait=True)

    @staticmethod
    def draw(photo: imaging.Photo, faces: list, sticker: Sticker | None, media_type: str, target: Path) -> dict:
        body, placements = annotate.render_photo(photo, faces, sticker, media_type)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        except OSError as exc:
            return error_line(None, "cannot-write", f"{target}: {exc.strerror or exc}")
        return {"out": str(target), "faces": len(faces), "stickers": [p.header() for p in placements]}


# ---- a running service -----------------------------------------------------------------------
class Remote:
    """Each file POSTed to the service at `url` (multipart, stdlib HTTP)."""

    def __init__(self, url: str, timeout: float = 60):
        self.url, self.timeout = url.rstrip("/"), timeout

    def check(self) -> str | None:
        """None when the service answers /readyz with 200, else why not."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=10) as response:
                return None if response.status == 200 else f"/readyz answered {response.status}"
        except urllib.error.HTTPError as exc:
            return f"/readyz answered {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))

    @staticmethod
    def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
        boundary = uuid.uuid4().hex
        quoted = filename.replace("\\", "_").replace('"', "_").replace("\r", "_").replace("\n", "_")
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{quoted}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"

    def post(self, path: str, data: bytes, filename: str, accept: str) -> tuple[int, dict, bytes]:
        body, content_type = self.multipart(data, filename)
        for attempt in range(RETRIES + 1):
            request = urllib.request.Request(self.url + path, data=body, method="POST",
                                             headers={"Content-Type": content_type, "Accept": accept})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as exc:
                answer = exc.code, dict(exc.headers), exc.read()
                if exc.code != 503 or attempt == RETRIES:
                    return answer
                retry_after = exc.headers.get("Retry-After", "1")
                time.sleep(float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 1.0)
        raise AssertionError("unreachable")

    def one(self, args, job: Job, target: Path | None) -> dict:
        try:
            data = job.path.read_bytes()
        except OSError as exc:
            return error_line(None, "unreadable-file", exc.strerror or str(exc))
        if args.command == "annotate":
            query = f"?{urllib.parse.urlencode({'sticker': args.sticker.value})}" if args.sticker else ""
            path, accept = "/annotate" + query, FORMATS[args.format][0]
        else:
            path, accept = "/" + args.command, "application/json"
        try:
            status, headers, body = self.post(path, data, job.path.name, accept)
        except (urllib.error.URLError, OSError) as exc:
            return error_line(None, "service-unreachable", str(getattr(exc, "reason", exc)))
        if status != 200:
            try:
                problem = json.loads(body)
                return error_line(problem.get("status", status), str(problem.get("type", "")).rsplit(":", 1)[-1],
                                  problem.get("detail", ""))
            except ValueError:
                return error_line(status, "http-error", body[:200].decode("utf-8", "replace"))
        if args.command != "annotate":
            return json.loads(body)
        assert target is not None  # run() gives every annotate job a target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        except OSError as exc:
            return error_line(None, "cannot-write", f"{target}: {exc.strerror or exc}")
        headers = {k.lower(): v for k, v in headers.items()}
        stickers = [s.strip() for s in headers.get("x-catface-stickers", "").split(",") if s.strip()]
        return {"out": str(target), "faces": int(headers.get("x-catface-faces", 0)), "stickers": stickers}

    def run(self, args, jobs: list[Job], emit: Callable[[Job, dict], None]) -> None:
        taken: set[Path] = set()
        targets = [out_path(job, args.out_dir, FORMATS[args.format][1], taken) if args.command == "annotate"
                   else None for job in jobs]
        with ThreadPoolExecutor(args.jobs, thread_name_prefix="catface-http") as pool:
            pending: deque[tuple[Job, Future]] = deque()
            for job, target in zip(jobs, targets):
                pending.append((job, pool.submit(self.one, args, job, target)))
                while len(pending) > 4 * args.jobs or (pending and pending[0][1].done()):
                    done_job, future = pending.popleft()
                    emit(done_job, future.result())
            while pending:
                done_job, future = pending.popleft()
                emit(done_job, future.result())


# ---- the command line ------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("paths", nargs="+", metavar="PATH", help="photo files and folders of photos")
    common.add_argument("--out", "-o", default="-", metavar="FILE",
                        help="write the JSON lines here (default: stdout)")
    common.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="in-process: threads reading and decoding photos; with --url: requests in flight "
                             "(default: the number of CPUs, %(default)s)")
    common.add_argument("--url", metavar="URL",
                        help="send the photos to the catface service at URL (e.g. http://localhost:8000) "
                             "instead of running the models here")
    common.add_argument("--models", type=Path, metavar="DIR",
                        help="in-process: the models folder (default: the bundled models, or CATFACE_MODELS_DIR)")
    common.add_argument("--threads", type=int, metavar="N",
                        help="in-process: onnxruntime threads per model (default: CATFACE_THREADS, else all cores)")
    shown = common.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true", default=None,
                       help="show progress on stderr even when it is not a terminal")
    shown.add_argument("--quiet", "-q", action="store_true", help="no progress and no summary on stderr")

    top = argparse.ArgumentParser(
        prog="catface", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Find cat faces (box, 9 landmarks, breeds) in photo files and folders: "
                    f"{imaging.NAMES}. Runs the bundled models in this process, or sends the photos to "
                    "a running catface service with --url.")
    top.add_argument("--version", action="version", version=f"catface {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("detect", parents=[common], help="every cat face: box, score, 9 landmarks, breeds",
                        description="Every cat face in each photo: box, score, 9 landmarks and breeds "
                                    "(the JSON of POST /detect), one line per photo.")
    commands.add_parser("breeds", parents=[common], help="whether it is a cat, and its likely breeds",
                        description="Whether each photo shows a cat face, and the breeds of the whole photo "
                                    "(the JSON of POST /breeds), one line per photo.")
    drawing = commands.add_parser("annotate", parents=[common], help="draw the faces (and a sticker) on copies",
                                  description="Draw each photo's cat faces (box, numbered landmarks, top breed) "
                                              "and optionally a sticker on an upright copy in --out-dir "
                                              "(the image of POST /annotate); one JSON line per photo.")
    drawing.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                         help="where the drawn photos go, keeping their paths under the folders given")
    drawing.add_argument("--sticker", type=Sticker, choices=list(Sticker), metavar="{" + ",".join(Sticker) + "}",
                         help="put this sticker on every face, placed by its landmarks")
    drawing.add_argument("--format", choices=sorted(FORMATS), default="jpeg",
                         help="of the drawn photos (default: jpeg)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.jobs < 1:
        parser().error("--jobs must be at least 1")
    if args.command != "annotate":
        args.out_dir, args.format, args.sticker = None, "jpeg", None
    show = (not args.quiet) and (args.progress or sys.stderr.isatty())

    def say(message: str, always: bool = False) -> None:
        if always or not args.quiet:
            print(f"catface: {message}", file=sys.stderr, flush=True)

    jobs, skipped = find_photos(args.paths)
    if skipped:
        names = ", ".join(str(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        say(f"left out {len(skipped)} file{'s' if len(skipped) != 1 else ''} not named as a photo: {names}")
    if not jobs:
        say("no photo found at " + " ".join(args.paths), always=True)
        return EXIT_USAGE

    engine: Local | Remote
    if args.url:
        engine = Remote(args.url)
        if (why := engine.check()) is not None:
            say(f"the service at {args.url} is not ready: {why}", always=True)
            return EXIT_UNAVAILABLE
    else:
        try:
            settings = Settings.from_env()
        except ValueError as exc:  # a CATFACE_* variable that is not a number, or out of range
            say(str(exc), always=True)
            return EXIT_USAGE
        settings = replace(settings, **{k: v for k, v in (("models_dir", args.models), ("threads", args.threads))
                                        if v is not None})
        try:
            engine = Local(settings)
        except Exception as exc:  # a missing or damaged model file
            say(f"the models in {settings.models_dir} cannot be loaded: {exc}", always=True)
            return EXIT_UNAVAILABLE

    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    progress = Progress(len(jobs), sys.stderr, show)
    lock = threading.Lock()

    def emit(job: Job, answer: dict) -> None:
        line = {"file": str(job.path), **answer}
        with lock:
            out.write(json.dumps(line) + "\n")
            progress.update(line)
        if out is sys.stdout:
            out.flush()

    try:
        engine.run(args, jobs, emit)
    except KeyboardInterrupt:
        progress.close()
        say(f"interrupted after {progress.done} of {len(jobs)} photos")
        return 130
    finally:
        if out is not sys.stdout:
            out.close()
    progress.close()
    elapsed = time.monotonic() - progress.start
    answered = progress.done - progress.errors
    rate = progress.done / max(elapsed, 1e-6)
    say(f"{progress.done} photo{'s' if progress.done != 1 else ''} in {elapsed:.1f} s ({rate:.1f}/s): "
        f"{answered} answered ({progress.faces} cat faces), {progress.errors} with an error line"
        + ("" if args.out == "-" else f"; lines in {args.out}"))
    return EXIT_SOME_FAILED if progress.errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
