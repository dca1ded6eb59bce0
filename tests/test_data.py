"""Finding, verifying, downloading and tokenising the corpus."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import data
from harness.data import EOS, DataSource, FileSpec, load_corpus
from harness.errors import DataError
from tests.conftest import TinyCorpus, write_corpus


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on loopback serving a temporary folder."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def publish(corpus: TinyCorpus, folder: Path) -> None:
    """Put the corpus files where the loopback mirror serves them."""
    folder.mkdir(parents=True, exist_ok=True)
    for spec in corpus.files.values():
        (folder / spec.name).write_bytes((corpus.folder / spec.name).read_bytes())


def test_real_ptb_vocabulary_and_token_counts(ptb: Path, tmp_path: Path) -> None:
    corpus = load_corpus(DataSource(data_dir=ptb, cache_dir=tmp_path))
    assert corpus.vocab_size == 10_000
    assert len(set(corpus.vocab)) == 10_000
    assert EOS in corpus.vocab and "<unk>" in corpus.vocab
    assert [corpus.split(s).numel() for s in ("train", "valid", "test")] == [929_589, 73_760, 82_430]
    # Sentences: one <eos> per line of each file.
    assert int((corpus.split("train") == corpus.eos_id).sum()) == 42_068
    assert int((corpus.split("test") == corpus.eos_id).sum()) == 3_761
    assert int((corpus.split("test") == corpus.vocab.index("<unk>")).sum()) == 4_794


def test_second_load_reads_the_token_cache_not_the_text(ptb: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_corpus(DataSource(data_dir=ptb, cache_dir=tmp_path))

    def fail(*args: object) -> None:
        raise AssertionError("the text files were tokenised again")

    monkeypatch.setattr(data, "_read_lines", fail)
    second = load_corpus(DataSource(data_dir=ptb, cache_dir=tmp_path), splits=("train", "valid"))
    assert second.vocab == first.vocab
    assert second.test is None  # a training process can load without the test split
    assert bool((second.split("valid") == first.split("valid")).all())
    with pytest.raises(DataError, match="'test' split was not loaded"):
        second.split("test")


def test_tiny_corpus_tokenised_with_eos_and_train_vocabulary(tiny_corpus: TinyCorpus, tmp_path: Path) -> None:
    corpus = load_corpus(DataSource(data_dir=tiny_corpus.folder, cache_dir=tmp_path / "c", files=tiny_corpus.files))
    words = [corpus.vocab[i] for i in corpus.split("test").tolist()]
    assert words == ["the", "dog", "ran", "on", "a", "mat", EOS, "a", "cat", EOS]
    # Most frequent first, ties alphabetical: <eos> and 'the' occur 4 times each in train.
    assert corpus.vocab[:3] == (EOS, "the", "cat")


def test_checksum_mismatch_names_file_and_both_hashes(tiny_corpus: TinyCorpus, tmp_path: Path) -> None:
    (tiny_corpus.folder / "tiny.valid.txt").write_text(" the cat sat \n")
    source = DataSource(data_dir=tiny_corpus.folder, cache_dir=tmp_path / "c", files=tiny_corpus.files)
    with pytest.raises(DataError) as error:
        load_corpus(source)
    message = str(error.value)
    assert "tiny.valid.txt" in message
    assert tiny_corpus.files["valid"].sha256 in message
    assert hashlib.sha256(b" the cat sat \n").hexdigest() in message


def test_missing_file_in_data_dir_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ptb.train.txt not found in the data directory .*HARNESS_DATA_DIR"):
        load_corpus(DataSource(data_dir=tmp_path, cache_dir=tmp_path / "c"))


def test_word_outside_train_vocabulary_is_an_error(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "d", {"train": ["a b"], "valid": ["a zebra"], "test": ["b"]})
    with pytest.raises(DataError, match="valid split holds the word 'zebra'"):
        load_corpus(DataSource(data_dir=corpus.folder, cache_dir=tmp_path / "c", files=corpus.files))


def test_download_from_loopback_mirror_fills_the_cache(tiny_corpus: TinyCorpus, http_root: tuple[Path, str],
                                                       tmp_path: Path) -> None:
    root, url = http_root
    publish(tiny_corpus, root)
    cache = tmp_path / "cache"
    source = DataSource(cache_dir=cache, files=tiny_corpus.files, mirrors=[url])
    corpus = load_corpus(source)
    assert corpus.split("test").numel() == 10
    assert sorted(p.name for p in (cache / "data").iterdir()) == sorted(s.name for s in tiny_corpus.files.values())
    # Second time: served from the cache even with the server's files gone.
    for path in root.iterdir():
        path.unlink()
    assert load_corpus(source).split("test").numel() == 10


def test_failed_download_tries_every_mirror_and_leaves_nothing(tiny_corpus: TinyCorpus, http_root: tuple[Path, str],
                                                               tmp_path: Path) -> None:
    _, url = http_root  # serves an empty folder: every request is a 404
    cache = tmp_path / "cache"
    source = DataSource(cache_dir=cache, files=tiny_corpus.files, mirrors=[url, url + "other/"])
    with pytest.raises(DataError) as error:
        load_corpus(source)
    message = str(error.value)
    assert "could not download tiny.train.txt" in message and "404" in message
    assert message.count(url) == 2
    assert list((cache / "data").iterdir()) == []


def test_download_with_wrong_bytes_is_refused_with_both_hashes(tiny_corpus: TinyCorpus,
                                                              http_root: tuple[Path, str], tmp_path: Path) -> None:
    root, url = http_root
    for spec in tiny_corpus.files.values():
        (root / spec.name).write_bytes(b" tampered \n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as error:
        load_corpus(DataSource(cache_dir=cache, files=tiny_corpus.files, mirrors=[url]))
    message = str(error.value)
    assert tiny_corpus.files["train"].sha256 in message
    assert hashlib.sha256(b" tampered \n").hexdigest() in message
    assert list((cache / "data").iterdir()) == []


def test_second_mirror_used_when_first_fails(tiny_corpus: TinyCorpus, http_root: tuple[Path, str],
                                             tmp_path: Path) -> None:
    root, url = http_root
    publish(tiny_corpus, root / "good")
    source = DataSource(cache_dir=tmp_path / "cache", files=tiny_corpus.files, mirrors=[url + "missing/", url + "good/"])
    assert load_corpus(source).vocab_size == 9


def test_corrupt_cached_file_is_replaced_by_a_fresh_download(tiny_corpus: TinyCorpus, http_root: tuple[Path, str],
                                                             tmp_path: Path) -> None:
    root, url = http_root
    publish(tiny_corpus, root)
    cache = tmp_path / "cache"
    (cache / "data").mkdir(parents=True)
    (cache / "data" / "tiny.train.txt").write_text("corrupt")
    load_corpus(DataSource(cache_dir=cache, files=tiny_corpus.files, mirrors=[url]))
    assert (cache / "data" / "tiny.train.txt").read_bytes() == (tiny_corpus.folder / "tiny.train.txt").read_bytes()


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    assert DataSource.from_options(None).data_dir == tmp_path
    assert DataSource.from_options(tmp_path / "x").data_dir == tmp_path / "x"  # the flag wins


def test_known_checksums_match_the_shared_sums_file(ptb: Path) -> None:
    sums = dict(reversed(line.split()) for line in (ptb / "SHA256SUMS").read_text().splitlines() if line.strip())
    for spec in data.PTB_WORD_FILES.values():
        assert sums[spec.name] == spec.sha256
    assert isinstance(spec, FileSpec)


def test_verified_data_dir_is_remembered_in_the_cache(tiny_corpus: TinyCorpus, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    load_corpus(DataSource(data_dir=tiny_corpus.folder, cache_dir=cache, files=tiny_corpus.files))
    for spec in tiny_corpus.files.values():
        assert (cache / "data" / spec.name).read_bytes() == (tiny_corpus.folder / spec.name).read_bytes()
    assert not list((cache / "data").glob("*.part"))  # written under a temporary name, then renamed
    # Later: no --data-dir and no mirror to download from; the cache answers.
    later = load_corpus(DataSource(cache_dir=cache, files=tiny_corpus.files, mirrors=()))
    assert later.split("test").numel() == 10


def test_unverified_data_dir_is_not_remembered(tiny_corpus: TinyCorpus, tmp_path: Path) -> None:
    (tiny_corpus.folder / "tiny.test.txt").write_text(" edited \n")
    cache = tmp_path / "c"
    with pytest.raises(DataError, match="wrong checksum"):
        load_corpus(DataSource(data_dir=tiny_corpus.folder, cache_dir=cache, files=tiny_corpus.files))
    assert not (cache / "data").exists() or not list((cache / "data").iterdir())


def test_a_verified_cached_copy_is_left_alone(tiny_corpus: TinyCorpus, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    source = DataSource(data_dir=tiny_corpus.folder, cache_dir=cache, files=tiny_corpus.files)
    assert len(data.remember_in_cache(data.resolve_files(source), source)) == 0  # resolve_files remembered them
    cached = cache / "data" / "tiny.train.txt"
    before = cached.stat().st_mtime_ns
    data.resolve_files(source)
    assert cached.stat().st_mtime_ns == before
