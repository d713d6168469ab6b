"""Reading and writing torch files: the one place vmim unpickles anything, and it never runs code.

Every path that reads a checkpoint or weights file goes through :func:`load`: ``init=`` of fine-tuning and probing
(a file or a run folder, :mod:`vmim.models.loading`), ``vmim eval`` and resume (:mod:`vmim.engine.checkpoint`,
including a sharded folder's ``state.pt``), a teacher target's ``path`` (:mod:`vmim.targets.teacher`, also while the
config is validated) and ``vmim convert`` (:mod:`vmim.convert`). Every torch file vmim writes goes through
:func:`save`. This module sits at the bottom of the import graph (the standard library, :mod:`vmim.errors`; torch and
numpy are imported inside the functions).

Decisions, and why:

* **``torch.load(weights_only=True)`` only.** The weights-only unpickler checks every global a pickle names, while
  it unpickles, against torch's allow list (tensors, storages, dtypes, containers) plus the few added here; anything
  else stops it before the object is built. The globals a refused file holds are named for the message by
  :func:`skeleton`, an unpickler that turns every global into an inert placeholder (nothing the file names is
  imported or called); the refusal itself is torch's. All three containers are covered: the zip format, the
  legacy format (``_use_new_zipfile_serialization=False``) and a bare ``pickle.dump`` file (read as the legacy
  format, whose first pickle is then the payload itself).
* **Refused: :class:`~vmim.errors.UnsafeFileError`** (exit 2), one line naming the file and the globals it holds
  (``posix.system``, ``builtins.eval``, ...); nothing of it was built. **Unreadable** (random bytes, an empty or
  truncated file, not a torch file): :class:`~vmim.errors.InputError` (exit 2) naming the file. Callers add the
  config key (``init``, ``targets.<name>.path``) and check the keys they need.
* **numpy arrays are data** (:data:`NUMPY_GLOBALS`): ``numpy.ndarray``, ``numpy.dtype``, the array reconstructor and
  the scalar constructor are allowed. Checkpoints written before vmim stored numpy's RNG state as a tensor hold one
  ndarray (``rng[i]["numpy"][1]``); they stay readable, safely: these globals build arrays and dtypes from bytes and
  strings only, and an object array's items go through the same restricted unpickler. Files written now hold no
  numpy at all (:func:`vmim.engine.checkpoint.rng_state`).
* **No opt-in for trusted pickles** (no switch back to unrestricted unpickling, no environment variable). A switch
  left set in a shell or cluster profile silently turns the guard off for every path, including files a run folder
  picked up from elsewhere; the remedy for a trusted legacy file is one line in a trusted session (load it, re-save
  its state dict with ``torch.save``), which the refusal message says. Reference checkpoints that pickle their
  ``args`` (VideoMAE, MAE) pass ``argparse.Namespace`` as an extra allowed global (``vmim convert`` only).
* **A sharded folder's DCP ``.metadata``** is a plain pickle that ``torch.distributed.checkpoint`` reads with
  ``pickle.load``. :func:`check_dcp_metadata` unpickles it first with an unpickler whose ``find_class`` admits only
  DCP's metadata classes, ``torch.Size``, dtypes / layouts and paths, so a tampered index is refused before DCP reads
  it (DCP's shard files themselves are read with ``weights_only=True``). An index that does not parse passes to DCP,
  which stops at the same byte after the same, admitted, globals and reports it. DCP then reads the same bytes
  again; a file swapped between the two reads by someone with write access to the run folder is out of scope.
* **Writes are atomic** (:func:`save`): to ``<name>.tmp``, fsync, renamed over ``<name>``. A failed write (disk
  full, a file size limit, a read-only folder) removes the ``.tmp`` and raises :class:`SaveError` (a
  :class:`~vmim.errors.RunError`, exit 1) naming the file and the OS error; the previous file under the real name is
  untouched, so the last checkpoint stays loadable.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable

from .errors import InputError, RunError, UnsafeFileError

NUMPY_GLOBALS = ("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                 "numpy.dtype", "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
"""numpy names allowed when loading (data-only constructors), both numpy 2 (``_core``) and numpy 1 spellings."""

REMEDY = ("a vmim file holds only tensors and plain data; if you trust this file, load it in a trusted session and "
          "re-save its tensors with torch.save(state_dict, ...)")


class SaveError(RunError):
    """Writing a torch file failed (disk full, size limit, permissions); its ``.tmp`` was removed, the previous file
    under the real name is untouched (exit 1)."""


def _numpy_safe_globals() -> list:
    """``(object, "module.name")`` pairs for :func:`torch.serialization.safe_globals`, for the numpy installed."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    return [(reconstruct, "numpy._core.multiarray._reconstruct"), (reconstruct, "numpy.core.multiarray._reconstruct"),
            (scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"),
            (np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype"),
            *[(type(np.dtype(c)), f"numpy.dtypes.{type(np.dtype(c)).__name__}") for c in "?bBhHiIlLqQefdgFDGO"]]


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _py3_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 spells it (protocols < 3 write ``__builtin__.eval`` for ``builtins.eval``)."""
    return f"{_PY2_MODULES.get(module, module)}.{name}"


def _file_globals(path: Path) -> list[str]:
    """Every global the file's pickles name, as far as they parse (:func:`skeleton`; nothing is built)."""
    try:
        return skeleton(path)[1]
    except (OSError, InputError):
        return []


def _allowed_names(extra: Iterable[Any]) -> set[str]:
    import numpy as np
    from torch import _weights_only_unpickler as wou

    torch_own = getattr(wou, "_get_allowed_globals", dict)()  # private: only for naming, never for refusing
    names = set(torch_own) | set(NUMPY_GLOBALS) | {_name(g) for g in extra}
    return names | {f"numpy.dtypes.{n}" for n in dir(np.dtypes) if n.endswith("DType")}


def _short(err: BaseException) -> str:
    """A one-line reason of a load failure, without torch's paragraphs of advice."""
    text = str(err)
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    text = m.group(1).strip() if m else (text.strip().splitlines() or [""])[0]
    text = re.sub(r"\s+", " ", text)
    return f"{type(err).__name__}: {text[:200]}" if text and not m else text[:200] or type(err).__name__


def refused(path: str | Path, names: list[str]) -> UnsafeFileError:
    """The :class:`UnsafeFileError` for a file holding the globals ``names``."""
    held = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return UnsafeFileError(f"{path}: refused for safety, it holds {held or 'unknown globals'} (objects beyond "
                           f"tensors and plain data, which would run code when read); nothing of it was loaded "
                           f"({REMEDY})")


def load(path: str | Path, *, extra_globals: Iterable[Any] = (), mmap: bool = False) -> Any:
    """The object of a torch file (or the tensors of a ``.safetensors`` file), read with ``weights_only=True``.

    Args:
        path: the file.
        extra_globals: classes allowed besides tensors, containers and :data:`NUMPY_GLOBALS` (``vmim convert`` adds
            ``argparse.Namespace``).
        mmap: map a zip-format file's tensors instead of reading them (ignored for other files).
    Raises:
        FileNotFoundError: nothing at ``path``.
        UnsafeFileError: the file holds other globals (named); nothing was built.
        InputError: not a torch file (random bytes, empty, truncated, a folder).
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, expected a checkpoint file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        except Exception as err:  # safetensors holds tensors only: a failure is a damaged file
            raise InputError(f"{path}: not a readable safetensors file ({_short(err)})") from None
    extra = list(extra_globals)
    try:
        with torch.serialization.safe_globals([*_numpy_safe_globals(), *extra]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a bare pickle: refused or not
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # classified below; nothing was built
        reason = _short(err)
    allowed = _allowed_names(extra)
    unsafe = [g for g in _file_globals(path) if g not in allowed]
    if unsafe or "Unsupported global" in reason:
        if not unsafe:
            m = re.search(r"GLOBAL (\S+)", reason)
            unsafe = [m.group(1)] if m else []
        raise refused(path, unsafe)
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: an empty file, not a torch checkpoint")
    raise InputError(f"{path}: not a readable torch checkpoint ({reason})")


def load_dict(path: str | Path, required: Iterable[str] = (), what: str = "a checkpoint", **kw: Any) -> dict:
    """:func:`load`, then check the object is a dict with the ``required`` keys.

    Raises:
        InputError: naming the file and the first missing key (or the type it holds instead of a dict).
    """
    obj = load(path, **kw)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: holds a {type(obj).__name__}, not {what} (a dict)")
    missing = [k for k in required if k not in obj]
    if missing:
        raise InputError(f"{path}: no {', '.join(repr(k) for k in missing)} key, not {what} "
                         f"(its keys: {', '.join(sorted(map(str, obj))[:12])})")
    return obj


# ----------------------------------------------------------------------------------------------------
# A torch-free look before the read
# ----------------------------------------------------------------------------------------------------

TORCH_MAGIC = 0x1950A86A20F9469CFC6C
"""The number a legacy-format torch file pickles first."""
DATA_MODULES = ("torch", "numpy", "collections", "_codecs")
"""Modules whose globals a weights file may name; anything else is refused by :func:`peek` without torch (torch's
own unpickler still checks every name of these when the file is read)."""
DATA_BUILTINS = {"set", "frozenset", "bytearray", "slice", "complex", "int", "float", "bool", "str", "bytes",
                 "list", "dict", "tuple"}


class _Placeholder(dict):
    """Stands for every object a pickle would build (a tensor, a class instance): a dict, so that the containers
    around it fill in; it runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass


class _SkeletonUnpickler(pickle.Unpickler):
    """Unpickles the structure only: every global becomes :class:`_Placeholder` (recorded by name), every storage a
    placeholder; no global of the file is ever imported or called."""

    def __init__(self, file: Any):
        super().__init__(file)
        self.names: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        self.names.append(_py3_name(module, name))
        return _Placeholder

    def persistent_load(self, pid: Any) -> Any:
        return _Placeholder()


def _data_global(name: str, extra: Iterable[str]) -> bool:
    module, _, short = name.rpartition(".")
    if name in extra:
        return True
    if module == "builtins":
        return short in DATA_BUILTINS
    return module.split(".")[0] in DATA_MODULES


def skeleton(path: Path) -> tuple[Any, list[str], Exception | None]:
    """(the file's object as a skeleton, the globals its pickles name, the error that stopped the read or None),
    read with :class:`_SkeletonUnpickler`: the zip format's ``data.pkl``; else the stream of pickles, whose first is
    the legacy format's magic number (then protocol, system info and the object), or else a bare pickle (object
    None: torch refuses it). Raises InputError for a zip without a pickled object."""
    unpickler, obj = None, None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if pkl is None:
                    raise InputError(f"{path}: a zip file without a pickled object, not a torch checkpoint")
                unpickler = _SkeletonUnpickler(io.BytesIO(zf.read(pkl)))
                obj = unpickler.load()
        else:
            with open(path, "rb") as f:
                unpickler = _SkeletonUnpickler(f)
                obj = unpickler.load()
                if obj != TORCH_MAGIC:
                    obj = None
                else:
                    for _ in range(3):  # protocol version, system info, then the object
                        obj = unpickler.load()
    except InputError:
        raise
    except Exception as err:  # not a pickle (any more): garbage, or truncated
        return None, list(dict.fromkeys(unpickler.names if unpickler else [])), err
    return obj, list(dict.fromkeys(unpickler.names)), None


def peek(path: str | Path, extra_globals: Iterable[str] = ()) -> Any:
    """The file's object as a skeleton (containers and plain values as they are, every tensor or other object a
    placeholder dict), read without torch and without building anything the file names, in milliseconds: for the
    checks that must refuse bad input before torch is imported (:mod:`vmim.preflight`, ``vmim convert``).

    Returns None where it cannot tell (a folder, a safetensors file, a bare pickle torch would refuse anyway): the
    full read (:func:`load`) decides then.

    Raises:
        FileNotFoundError: nothing at ``path``.
        UnsafeFileError: a global outside :data:`DATA_MODULES` (``posix.system``, ``builtins.eval``, ...).
        InputError: empty, or neither a zip nor a pickle (random bytes).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir() or path.suffix == ".safetensors":
        return None
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: an empty file, not a torch checkpoint")
    extra = set(extra_globals)
    obj, names, err = skeleton(path)
    unsafe = [n for n in names if not _data_global(n, extra)]
    if unsafe:
        raise refused(path, unsafe)
    if err is not None:
        raise InputError(f"{path}: not a readable torch checkpoint ({_short(err)})")
    return obj


# ----------------------------------------------------------------------------------------------------
# A DCP folder's index
# ----------------------------------------------------------------------------------------------------

_DCP_MODULES = ("torch.distributed.checkpoint.metadata",)
_DCP_NAMES = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
              ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
              *[("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")]}


class _DcpUnpickler(pickle.Unpickler):
    """Admits only what a DCP ``.metadata`` holds (module docstring); records what else it was asked for."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        ok = (module in _DCP_MODULES and not name.startswith("__")) or (module, name) in _DCP_NAMES or (
            module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                           torch.memory_format)))
        if not ok:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")
        obj = super().find_class(module, name)
        if module in _DCP_MODULES and not isinstance(obj, type):
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")
        return obj


def check_dcp_metadata(folder: str | Path) -> None:
    """Refuse a sharded checkpoint folder whose ``.metadata`` names anything but DCP's metadata classes.

    An index that does not parse (empty, truncated) passes: unpickling stops at the same byte in DCP's own read, after
    the same globals, all of which were admitted here, so it cannot run code there either; DCP reports it.

    Raises:
        UnsafeFileError: naming the file and the first global it was refused for.
    """
    path = Path(folder) / ".metadata"
    try:
        with open(path, "rb") as f:
            _DcpUnpickler(f).load()
    except pickle.UnpicklingError as err:
        m = re.match(r"GLOBAL (\S+)", str(err))
        if m:
            raise refused(path, [m.group(1)]) from None
    except Exception:  # does not parse: left to DCP (see above)
        pass


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def _os_error(err: BaseException) -> str:
    """The OS error behind a failed write (torch's zip writer wraps it in a RuntimeError), as one phrase."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError):
            return f"{seen.strerror or seen} (errno {seen.errno})" if seen.errno else str(seen)
        seen = seen.__cause__ or seen.__context__
    return _short(err)


def remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:  # the error being reported matters more than a stale .tmp, which readers ignore
        pass


def save_failed(path: Path, err: BaseException) -> SaveError:
    kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
    return SaveError(f"could not write {path}: {_os_error(err)}; its .tmp was removed, {kept}")


def save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path.tmp``, fsync, rename over ``path`` (the folder is made if missing).

    Raises:
        SaveError: the write failed; the ``.tmp`` is gone and the file under ``path`` (if any) is unchanged.
    """
    import torch

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        remove_quietly(tmp)
        raise save_failed(path, err) from None
    except BaseException:  # interrupted: no half-written file is left behind either
        remove_quietly(tmp)
        raise
    return path


def copy(src: Path, dst: Path) -> Path:
    """An independent copy of ``src`` at ``dst``, through ``dst.tmp`` (same failure contract as :func:`save`)."""
    import shutil

    tmp = dst.with_name(dst.name + ".tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as err:
        remove_quietly(tmp)
        raise save_failed(dst, err) from None
    except BaseException:
        remove_quietly(tmp)
        raise
    return dst


__all__ = ["NUMPY_GLOBALS", "SaveError", "check_dcp_metadata", "copy", "load", "load_dict", "peek", "refused",
           "save", "skeleton"]
