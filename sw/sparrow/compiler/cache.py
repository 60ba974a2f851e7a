"""Multi-level on-disk compile cache.

:func:`sparrow.compiler.compile` runs five stages; each stage's output is stored on disk under a
key that hashes everything the output depends on, so a later compile resumes from the deepest
stage whose key is unchanged::

    frontend ──┬── partition ──┐
               └── quantize  ──┴── lower ──────┬── program
                                  └── accuracy ─┘

========== =============================== ==================================================
stage      stored output                   key = hash of
========== =============================== ==================================================
frontend   imported + simplified IR graph  ONNX model bytes (external data loaded), onnx
           (pickle)                        version, code of the frontend modules
partition  ``{node: placement/estimates}`` frontend key, hardware config (preset: every
           (pickle)                        HwConfig field), code of the partitioner
quantize   activation scales ``{value:     frontend key, calibration data (array bytes,
           scale}`` (pickle; applied to    shapes, dtypes and names; or the .npz file
           the frontend graph)             bytes; ``None`` = the built-in noise), quantizer
                                           code
lower      the lowered plan: steps,        partition key, quantize key, back-end ``options``
           programs, segment images        (canonical JSON), the ``save=`` request, code of
           (pickle)                        the back end (every ``compiler/*.py`` module
                                           except program.py, ``kernels/``, isa, config,
                                           codec, errors, ``golden/perf.py``)
accuracy   the int8-vs-float accuracy report partition key, quantize key, ``accuracy_batches``,
           (golden runs on calibration     code of the back end, program.py and ``golden/``
           batches; pickle)                -- *not* the back-end ``options`` or ``save=``
program    the final :class:`CompiledProgram` lower key, accuracy key, code of program.py and
           incl. the accuracy report       ``golden/``
           (pickle of its manifest,
           programs and constants, tagged
           with the ``.spw`` format)
========== =============================== ==================================================

Why ``accuracy`` ignores back-end options: every back-end option (fusion, scheduling, DRAM
reuse, compression, batching, saved intermediates) must leave the program's outputs bit-identical
(``tests/test_compiler_opt.py`` checks each one on and off), so the report -- which compares those
outputs with the float model -- is a function of the quantized graph, the partition and the code.
A back-end change therefore re-lowers but does not re-run the accuracy batches.

Every key also hashes :data:`CACHE_VERSION`, the Python and NumPy versions, and the source of
``compiler/__init__.py`` and this module (the pipeline glue). "Code of" means the SHA-256 of the
listed source files: an edited compiler never serves entries made by the old code. The preset
therefore reaches partition (and through its key lower and program), calibration reaches quantize
(and lower, program) but not partition, and a back-end ``options`` key reaches only lower and
program. ``debug`` (the IR check between passes) and ``log`` are not part of any key: they do not
change outputs (with ``debug`` the IR check is re-run on a graph read from the cache).

Sub-caches: inside ``lower``, two kinds of content-addressed entries (:data:`SUBCACHES`,
``DIR/v{CACHE_VERSION}/NAME/KEY.entry``, same header, checksum and corruption handling) let a
back-end change reuse the work its change does not touch:

``kernels``
    What lowering one node (or fused group) emitted into its program's builder: instructions,
    constant segments, kernel notes, allocations (:func:`.lower._lower_node_memo`). Key: the
    model's partition and quantize keys and the code of ``lower`` (so the node's weights, scales
    and attributes), the node, its fused group, the ``batch`` option, the placement of every
    tensor it reads, how its output is allocated (reuse, compressed) and the builder's allocator
    state -- the input tensors' addresses and the allocator's next address only modulo the
    allocation alignment: an entry recorded at another layout is relocated (every address in an
    input's range moves with that input, every address the node allocated moves with the
    allocator; an entry holding an address outside those ranges and the absolutely keyed ones
    is used at its own layout only). A hit replays the instructions through the builder's
    hazard tracking, so their semaphores are derived from the program before them exactly as
    when emitted.
``schedule``
    Each accelerator program's scheduling and synchronisation (:func:`.schedule.schedule`,
    ``ProgramBuilder.finish``). Key: the instructions emitted for it, in order, with their node
    tags (:func:`.schedule.signature`), the hardware config, the ``schedule`` and ``timeline``
    options and the code of ``lower``. Entry: the program image, its tags, the schedule report
    and the kept semaphore waits.

So a ``keep`` of a value that is in external memory anyway, or an option change that affects
only some nodes or programs, re-emits and re-schedules only what changed; the plan is identical
either way (checked against cache-less compiles in ``tests/test_compile_cache.py``).
``prog.cache_stats.sub`` counts hits and misses per sub-cache (:class:`SubStat`); they are not
stages and not in ``status()``.

Stages run on demand from the last one: a hit on ``program`` reads nothing else (the other stages
are reported ``unused``); a miss needs its inputs, which are read from the cache or rebuilt.

Location: ``cache_dir=`` argument, else the ``SPARROW_CACHE_DIR`` environment variable, else
``~/.cache/sparrow``; ``cache=False`` disables it (stages still timed, reported ``off``). Entries
live at ``DIR/v{CACHE_VERSION}/STAGE/KEY.entry``, written to a temporary file in the same
directory and renamed into place (atomic: a reader never sees half an entry; concurrent writers of
one key both write the same bytes). An entry is::

    b"SPARROW-CACHE\\n" + header JSON line {"stage", "key", "length", "sha256"} + b"\\n" + payload

A read checks the magic, the header's stage and key, the payload length and its SHA-256; an entry
that fails (truncated, bit-flipped, unreadable, or whose payload does not decode) is reported
through ``log`` and the ``sparrow.cache`` logger, deleted and rebuilt -- never used. Payloads are
pickles (``program``'s too, not the ``.spw`` zip, which is slow to write and read): the checksum
detects corruption, not tampering, so the cache directory must be as trusted as the code (it is
the user's own cache). There is no
eviction: delete the directory (or :meth:`CompileCache.clear`) to reclaim space.

Statistics: the returned program's ``cache_stats`` attribute (a :class:`CacheStats`; not saved in
the ``.spw``), per stage ``status`` (``hit``, ``miss``, ``unused``, ``off``), ``seconds`` (build
time on a miss, read + decode time on a hit), ``bytes`` of the entry, ``key``, and ``corrupt``
(the reason, when a bad entry was found and rebuilt). ``sparrow compile --cache-stats`` prints it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import pickle
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "CACHE_VERSION",
    "STAGES",
    "SUBCACHES",
    "SubStat",
    "CacheStats",
    "CompileCache",
    "StageStat",
    "code_version",
    "code_versions",
    "default_cache_dir",
    "digest",
]

CACHE_VERSION = 1
STAGES = ("frontend", "partition", "quantize", "lower", "accuracy", "program")
#: content-addressed entries a stage's build reads and writes itself (see "Schedule entries")
SUBCACHES = ("kernels", "schedule")
MAGIC = b"SPARROW-CACHE\n"

_log = logging.getLogger("sparrow.cache")
_TMP_SEQ = itertools.count()
_PKG = Path(__file__).resolve().parents[1]  # sw/sparrow

# Source files (relative to the sparrow package; a trailing "/" is every .py below that folder)
# whose contents are each stage's code version. "compiler/*" is every compiler module not named
# in _NOT_LOWER (new back-end modules are covered without editing this table).
_COMMON = ("compiler/__init__.py", "compiler/cache.py")
_NOT_LOWER = {"frontend.py", "partition.py", "program.py"}
STAGE_CODE = {
    "frontend": ("compiler/frontend.py", "compiler/ir.py", "compiler/hostops.py"),
    "partition": ("compiler/partition.py", "compiler/ir.py", "compiler/hostops.py", "config.py"),
    "quantize": ("compiler/quantize.py", "compiler/ir.py", "compiler/hostops.py"),
    # golden/perf.py: the cycle model behind the scheduler's estimates and the conv tiling
    "lower": ("compiler/*", "kernels/", "isa.py", "config.py", "codec.py", "errors.py", "golden/perf.py"),
    # the accuracy report: the golden model runs the program on calibration batches
    "accuracy": (
        "compiler/*",
        "compiler/program.py",
        "kernels/",
        "golden/",
        "isa.py",
        "config.py",
        "codec.py",
        "errors.py",
    ),
    "program": (
        "compiler/program.py",
        "compiler/lower.py",
        "compiler/quantize.py",
        "compiler/hostops.py",
        "golden/",
        "isa.py",
        "config.py",
        "codec.py",
        "errors.py",
    ),
}

_file_hashes: dict = {}
_spec_files: dict = {}     # (package dir, spec) -> [(name relative to the package, path)]
_versions: dict = {}       # (package dir, stage) -> (stat of every file, digest)
_plans: dict = {}          # (package dir, stages) -> (unique files, per stage: files, indices)


def _files(spec: str) -> list:
    """The source files a spec names, listed once per process (``code_version`` runs on every
    compile; the files' *contents* are checked every time through their stat)."""
    key = (_PKG, spec)
    got = _spec_files.get(key)
    if got is None:
        if spec == "compiler/*":
            paths = sorted(p for p in (_PKG / "compiler").glob("*.py") if p.name not in _NOT_LOWER)
        elif spec.endswith("/"):
            paths = sorted((_PKG / spec).rglob("*.py"))
        else:
            paths = [_PKG / spec]
        got = _spec_files[key] = [(str(p.relative_to(_PKG)), str(p)) for p in paths]
    return got


def _stat(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _file_hash(path: str, memo) -> str:
    if memo is None:
        return "missing"
    got = _file_hashes.get(path)
    if got is None or got[0] != memo:
        with open(path, "rb") as f:
            got = _file_hashes[path] = (memo, hashlib.sha256(f.read()).hexdigest())
    return got[1]


def code_version(stage: str) -> str:
    """SHA-256 over the source files of ``stage`` (and the pipeline glue), names included.
    Recomputed only when a file's size or modification time changed."""
    if stage not in STAGE_CODE:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    return code_versions((stage,))[stage]


def code_versions(stages=STAGES) -> dict:
    """``{stage: code_version(stage)}``, each source file stat'ed once (the stages share most
    of their files; this runs on every compile)."""
    stages = tuple(stages)
    plan = _plans.get((_PKG, stages))
    if plan is None:  # the files of these stages, each listed once, and every stage's indices
        paths, index, per = [], {}, []
        for stage in stages:
            files = [f for spec in _COMMON + STAGE_CODE[stage] for f in _files(spec)]
            for _, path in files:
                if path not in index:
                    index[path] = len(paths)
                    paths.append(path)
            per.append((stage, files, [index[path] for _, path in files]))
        plan = _plans[(_PKG, stages)] = (paths, per)
    paths, per = plan
    stats = [_stat(path) for path in paths]
    out = {}
    for stage, files, idx in per:
        st = tuple([stats[i] for i in idx])
        got = _versions.get((_PKG, stage))
        if got is None or got[0] != st:
            h = hashlib.sha256()
            for (rel, path), s in zip(files, st):
                h.update(rel.encode() + b"\0" + _file_hash(path, s).encode() + b"\0")
            got = _versions[(_PKG, stage)] = (st, h.hexdigest())
        out[stage] = got[1]
    return out


_BIG = 1 << 16  # byte strings at least this long are hashed in place, not copied into the buffer


def _encode(obj, out: list, h) -> None:
    """Append a canonical, type-tagged encoding of ``obj`` to ``out`` (long byte strings and
    arrays go to hash ``h`` directly, after what ``out`` holds so far)."""
    t = type(obj)
    if t is str:
        b = obj.encode()
        out.append(b"s%d\0" % len(b))
        out.append(b)
    elif t is int:
        out.append(b"i%d\0" % obj)
    elif obj is None:
        out.append(b"n")
    elif t is bool:
        out.append(b"T" if obj else b"F")
    elif t is float:
        out.append(b"f" + repr(obj).encode() + b"\0")
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        b = obj.tobytes() if isinstance(obj, memoryview) else obj
        out.append(b"b%d\0" % len(b))
        if len(b) >= _BIG:
            h.update(b"".join(out))
            out.clear()
            h.update(b)
        else:
            out.append(bytes(b))
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        out.append(b"a" + f"{a.dtype.str}{a.shape}".encode() + b"\0")
        h.update(b"".join(out))
        out.clear()
        h.update(a.tobytes() if a.dtype.hasobject else a.data)
    elif isinstance(obj, (np.integer, np.floating)):
        _encode(obj.item(), out, h)
    elif isinstance(obj, int):  # bool is handled above; IntEnum and other subclasses
        _encode(int(obj), out, h)
    elif isinstance(obj, float):
        _encode(float(obj), out, h)
    elif isinstance(obj, str):
        _encode(str(obj), out, h)
    elif isinstance(obj, dict):
        out.append(b"d%d\0" % len(obj))
        for k in sorted(obj, key=repr):
            _encode(k, out, h)
            _encode(obj[k], out, h)
    elif isinstance(obj, (list, tuple)):
        out.append(b"l%d\0" % len(obj))
        for x in obj:
            _encode(x, out, h)
    else:
        raise TypeError(f"cannot hash a {type(obj).__name__} into a cache key")


def digest(*parts) -> str:
    """Hex SHA-256 of a canonical encoding of ``parts`` (None/bool/int/float/str/bytes/arrays,
    and dicts/lists/tuples of them; dict keys sorted; every item tagged with its type and,
    for strings, bytes and containers, its length)."""
    h = hashlib.sha256()
    out = []
    _encode(list(parts), out, h)
    h.update(b"".join(out))
    return h.hexdigest()


_SALT = None


def salt() -> str:
    """What every key shares: cache format, interpreter and NumPy versions."""
    global _SALT
    if _SALT is None:
        _SALT = digest("sparrow-cache", CACHE_VERSION, platform.python_version(), np.__version__)
    return _SALT


def default_cache_dir() -> Path:
    env = os.environ.get("SPARROW_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/sparrow").expanduser()


@dataclass
class StageStat:
    status: str = "unused"  # hit | miss | unused | off
    key: str | None = None
    seconds: float = 0.0
    bytes: int = 0
    corrupt: str | None = None

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "key": self.key,
            "seconds": self.seconds,
            "bytes": self.bytes,
            "corrupt": self.corrupt,
        }


@dataclass
class SubStat:
    """Hits and misses of one sub-cache (:data:`SUBCACHES`) during one compile."""

    hits: int = 0
    misses: int = 0
    bytes: int = 0
    corrupt: str | None = None

    def as_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "bytes": self.bytes, "corrupt": self.corrupt}


@dataclass
class CacheStats:
    """Per-stage outcome of one compile (``prog.cache_stats``); ``sub``: per sub-cache counts."""

    directory: str | None
    enabled: bool
    stages: dict = field(default_factory=lambda: {s: StageStat() for s in STAGES})
    sub: dict = field(default_factory=lambda: {s: SubStat() for s in SUBCACHES})

    @property
    def hits(self) -> int:
        return sum(s.status == "hit" for s in self.stages.values())

    @property
    def misses(self) -> int:
        return sum(s.status == "miss" for s in self.stages.values())

    def status(self) -> dict:
        """``{stage: status}``."""
        return {k: v.status for k, v in self.stages.items()}

    def as_dict(self) -> dict:
        return {
            "directory": self.directory,
            "enabled": self.enabled,
            "hits": self.hits,
            "misses": self.misses,
            "stages": {k: v.as_dict() for k, v in self.stages.items()},
            "sub": {k: v.as_dict() for k, v in self.sub.items()},
        }

    def format(self) -> str:
        head = f"compile cache: {self.directory}" if self.enabled else "compile cache: off"
        rows = [head, f"  {'stage':10} {'result':7} {'seconds':>8} {'bytes':>10}  key"]
        for name, s in self.stages.items():
            rows.append(
                f"  {name:10} {s.status:7} {s.seconds:8.3f} {s.bytes:10d}  {(s.key or '-')[:16]}"
                + (f"  (corrupt entry rebuilt: {s.corrupt})" if s.corrupt else "")
            )
        rows.append(f"  hits {self.hits}, misses {self.misses}")
        for name, u in self.sub.items():
            if u.hits or u.misses or u.corrupt:
                per = "node" if name == "kernels" else "accelerator program"
                rows.append(f"  {name} entries (per {per}): hits {u.hits}, misses {u.misses}"
                            + (f"  (corrupt entry rebuilt: {u.corrupt})" if u.corrupt else ""))
        return "\n".join(rows)


class CompileCache:
    """Entries ``DIR/v{CACHE_VERSION}/STAGE/KEY.entry`` with checksummed headers.

    Parameters
    ----------
    directory : path or None
        Cache root; ``None``: :func:`default_cache_dir`.
    enabled : bool
        ``False``: :meth:`stage` always builds and nothing is read or written.
    log : callable or None
        Receives one line per hit, miss and rejected entry.
    """

    def __init__(self, directory=None, enabled: bool = True, log=None):
        if not isinstance(enabled, bool):
            raise ValueError(f"cache must be True or False, not {enabled!r}")
        self.root = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.enabled = enabled
        self.log = log
        self.stats = CacheStats(str(self.root) if enabled else None, enabled)
        self._nested = []  # time spent in stages built on demand inside the current one
        self._dirs = {}  # stage -> its directory (str: pathlib costs show in a warm compile)
        if not enabled:
            for s in self.stats.stages.values():
                s.status = "off"

    # -- files ------------------------------------------------------------------------------
    def path(self, stage: str, key: str) -> Path:
        return self.root / f"v{CACHE_VERSION}" / stage / f"{key}.entry"

    def _dir(self, stage: str) -> str:
        d = self._dirs.get(stage)
        if d is None:
            d = self._dirs[stage] = os.path.join(str(self.root), f"v{CACHE_VERSION}", stage)
        return d

    def _say(self, msg: str, warn: bool = False) -> None:
        (_log.warning if warn else _log.info)(msg)
        if self.log is not None:
            self.log(msg)

    def read(self, stage: str, key: str):
        """The payload bytes of a valid entry, or ``None`` (absent; a bad entry is deleted)."""
        p = os.path.join(self._dir(stage), f"{key}.entry")
        try:
            with open(p, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            self._reject(stage, p, f"unreadable ({e.strerror or e})")
            return None
        reason = None
        if not blob.startswith(MAGIC):
            reason = "bad magic"
        else:
            nl = blob.find(b"\n", len(MAGIC))
            try:
                if nl < 0:
                    raise ValueError("no header line")
                head = json.loads(blob[len(MAGIC) : nl])
                payload = blob[nl + 1 :]
                if head.get("stage") != stage or head.get("key") != key:
                    reason = "header names another entry"
                elif len(payload) != head.get("length"):
                    reason = f"length {len(payload)} != {head.get('length')} (truncated?)"
                elif hashlib.sha256(payload).hexdigest() != head.get("sha256"):
                    reason = "checksum mismatch"
            except (ValueError, AttributeError, UnicodeDecodeError) as e:
                reason = f"bad header ({e})"
        if reason:
            self._reject(stage, p, reason)
            return None
        st = self.stats.stages.get(stage)
        if st is not None:
            st.bytes = len(blob)
        else:
            self.stats.sub[stage].bytes += len(blob)
        return payload

    def _reject(self, stage: str, p, reason: str) -> None:
        (self.stats.stages.get(stage) or self.stats.sub[stage]).corrupt = reason
        self._say(f"cache: {stage} entry {p} is corrupt: {reason}; deleted, rebuilding", warn=True)
        try:
            os.unlink(p)
        except OSError:
            pass

    def write(self, stage: str, key: str, payload: bytes) -> int:
        """Write an entry atomically; returns its size (0 if the directory is not writable)."""
        d = self._dir(stage)
        p = os.path.join(d, f"{key}.entry")
        sha = hashlib.sha256(payload).hexdigest()
        if key.isascii() and key.isalnum() and stage.isalnum():  # hex keys, stage names: no JSON escaping needed
            # byte for byte json.dumps(..., sort_keys=True), without its machinery
            head = (f'{{"key": "{key}", "length": {len(payload)}, "sha256": "{sha}", '
                    f'"stage": "{stage}"}}').encode()
        else:
            head = json.dumps({"stage": stage, "key": key, "length": len(payload), "sha256": sha},
                              sort_keys=True).encode()
        blob = MAGIC + head + b"\n" + payload
        # a temporary name of this process and call (O_EXCL: never another writer's file)
        tmp = os.path.join(d, f".{key[:16]}.{os.getpid()}.{next(_TMP_SEQ)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            try:
                fd = os.open(tmp, flags, 0o600)
            except FileNotFoundError:  # the first entry of this stage
                os.makedirs(d, exist_ok=True)
                fd = os.open(tmp, flags, 0o600)
            try:
                try:
                    view = memoryview(blob)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                os.replace(tmp, p)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as e:
            self._say(f"cache: cannot write {p}: {e.strerror or e} (continuing without it)", warn=True)
            return 0
        return len(blob)

    def clear(self) -> None:
        """Delete every entry of this cache format version."""
        import shutil

        shutil.rmtree(self.root / f"v{CACHE_VERSION}", ignore_errors=True)

    def memo(self, name: str, *base) -> "Memo | None":
        """A :class:`Memo` over sub-cache ``name`` whose keys hash ``base`` first (``None`` when
        the cache is disabled)."""
        if name not in SUBCACHES:
            raise ValueError(f"name must be one of {SUBCACHES}, not {name!r}")
        return Memo(self, name, digest(*base)) if self.enabled else None

    # -- stages -----------------------------------------------------------------------------
    def stage(self, stage: str, key: str | None, build, dump, load):
        """``load(payload)`` of a valid entry (hit), else ``build()`` and store ``dump(result)``.

        ``key=None`` (or a disabled cache) always builds. A payload that fails to ``load``
        counts as a corrupt entry: deleted and rebuilt. ``seconds`` is exclusive: the time of
        stages that ``build`` pulls in on demand is counted for them, not for this stage.
        """
        st = self.stats.stages[stage]
        st.key = key
        self._nested.append(0.0)
        t0 = time.perf_counter()
        try:
            obj = self._stage(st, stage, key, build, dump, load)
        finally:
            total = time.perf_counter() - t0
            inner = self._nested.pop()
            st.seconds = total - inner
            if self._nested:
                self._nested[-1] += total
        if st.status == "hit":
            self._say(f"cache: {stage} hit {key[:16]} ({st.seconds:.3f} s)")
        elif st.status == "miss":
            self._say(f"cache: {stage} miss {key[:16]} (built in {st.seconds:.3f} s)")
        return obj

    def _stage(self, st, stage, key, build, dump, load):
        if self.enabled and key is not None:
            payload = self.read(stage, key)
            if payload is not None:
                try:
                    obj = load(payload)
                except Exception as e:  # noqa: BLE001 - any decode failure means a bad entry
                    self._reject(stage, os.path.join(self._dir(stage), f"{key}.entry"),
                                 f"payload does not decode ({type(e).__name__}: {e})")
                else:
                    st.status = "hit"
                    return obj
        obj = build()
        if self.enabled and key is not None:
            st.status = "miss"
            st.bytes = self.write(stage, key, dump(obj))
        else:
            st.status = "off"
        return obj


class Memo:
    """Content-addressed pickled entries of one sub-cache, read and written by a stage's build.

    ``get(*parts)`` returns ``(key, object or None)``; ``put(key, obj)`` stores what was built
    for a miss. Keys are the SHA-256 of ``base`` and ``repr(parts)``: ``parts`` are built by the
    compiler from str/int/float/bool/None, bytes and (nested) lists/tuples, whose ``repr`` is
    canonical and cheaper than :func:`digest`. Entries have the same header, checksum and
    corruption handling as stage entries (a bad one is deleted and counts as a miss).
    """

    def __init__(self, store: CompileCache, name: str, base: str):
        self.store, self.name, self.base = store, name, base
        self.stat = store.stats.sub[name]

    def get(self, *parts):
        key = hashlib.sha256(self.base.encode() + repr(parts).encode()).hexdigest()
        payload = self.store.read(self.name, key)
        if payload is not None:
            try:
                obj = pickle.loads(payload)
            except Exception as e:  # noqa: BLE001 - any decode failure means a bad entry
                self.store._reject(self.name, os.path.join(self.store._dir(self.name), f"{key}.entry"),
                                   f"payload does not decode ({type(e).__name__}: {e})")
            else:
                self.stat.hits += 1
                self.store._say(f"cache: {self.name} hit {key[:16]}")
                return key, obj
        return key, None

    def put(self, key: str, obj) -> None:
        self.stat.misses += 1
        self.stat.bytes += self.store.write(self.name, key, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        self.store._say(f"cache: {self.name} miss {key[:16]}")
