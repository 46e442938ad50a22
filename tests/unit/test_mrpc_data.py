"""tools/mrpc_data.py: ../shared/data's MSR Paraphrase files rebuilt from Microsoft's training file and the split
galsang/ABCNN published -- byte for byte, pinned, and said plainly when a source cannot be had. No test here
reaches the internet: downloads come from a real HTTP server on loopback, or fail on a closed loopback port."""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tasks.common import mrpc
from tasks.common.config import REPO_ROOT
from tools import mrpc_data
from tools.mrpc_data import BOM, BUILT, DataError, TrainingFile, published_split, sha256

SHARED = REPO_ROOT.parent / "shared" / "data"
HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
PAIRS = [f"{i % 2}\t{100 + i}\t{200 + i}\tSentence {i} one.\tSentence {i} two." for i in range(6)]
TEST_MEMBER = "_D7B391F9EAFF4B1B8BCE8F21B20B1B61"  # the installer's test file: never to be taken out
needs_cab_tools = pytest.mark.skipif(
    not (shutil.which("cabextract") and shutil.which("gcab")),
    reason="cabextract and gcab (Debian packages) make and open a cabinet like the installer's",
)


def microsoft_file(pairs: list[str]) -> bytes:
    """A training file as Microsoft ships it: BOM, CR LF, a newline after the last pair."""
    return "".join(line + "\r\n" for line in [HEADER, *pairs]).encode()


def make_dev(microsoft: bytes, order: list[int], dev_size: int) -> dict[str, bytes]:
    """What make_dev.py wrote from this file, shuffled into `order`: it read a copy with LF line endings and no
    newline after the last pair, kept each line as read (the header with its BOM), and wrote them back."""
    copy = microsoft.replace(b"\r\n", b"\n").removesuffix(b"\n").decode()
    header, *lines = io.StringIO(copy, newline="").readlines()
    shuffled = [lines[i] for i in order]
    return {
        "dev": (header + "".join(shuffled[:dev_size])).encode(),
        "train": (header + "".join(shuffled[dev_size:])).encode(),
    }


def test_files_made_as_make_dev_py_made_them_are_rebuilt_byte_for_byte_less_their_bom():
    microsoft = microsoft_file(PAIRS)
    published = make_dev(microsoft, [2, 4, 5, 0, 3, 1], dev_size=2)  # pair 5, Microsoft's last, opens train
    built = published_split(microsoft, published)
    assert built == {split: data.removeprefix(BOM) for split, data in published.items()}
    assert not built["train"].startswith(BOM) and built["train"].startswith(b"Quality\t")
    # The last pair ran into the next one: one line, as line 2124 of the real training file.
    assert built["train"].decode().split("\n")[1] == PAIRS[5] + PAIRS[0]


def test_the_run_on_line_is_what_the_pipelines_reader_skips(tmp_path):
    built = published_split(microsoft_file(PAIRS), make_dev(microsoft_file(PAIRS), [2, 4, 5, 0, 3, 1], 2))
    (tmp_path / "train.tsv").write_bytes(built["train"])
    pairs, labels, skipped = mrpc.read(tmp_path / "train.tsv")
    assert skipped == [2] and len(pairs) == len(labels) == 2


def test_a_published_line_that_is_no_pair_of_microsofts_file_is_refused_naming_it():
    microsoft = microsoft_file(PAIRS)
    published = make_dev(microsoft, [0, 1, 2, 3, 4, 5], dev_size=2)
    published["dev"] = published["dev"].replace(b"Sentence 1 two.", b"Sentence 1 too.")
    with pytest.raises(DataError, match=r"line 3 of the published dev file is no pair of Microsoft's"):
        published_split(microsoft, published)


def test_a_split_that_repeats_or_drops_a_pair_is_refused():
    microsoft = microsoft_file(PAIRS)
    repeated = make_dev(microsoft, [0, 1, 1, 2, 3, 4, 5], dev_size=2)
    with pytest.raises(DataError, match=r"no partition of Microsoft's 6 training pairs: 1 pairs appear twice"):
        published_split(microsoft, repeated)
    dropped = make_dev(microsoft, [0, 1, 2, 3, 5], dev_size=2)
    with pytest.raises(DataError, match=r"0 pairs appear twice, 1 are missing \(first: '0\\t104"):
        published_split(microsoft, dropped)


def test_a_split_made_from_a_copy_with_its_last_newline_is_not_the_published_one():
    microsoft = microsoft_file(PAIRS)
    published = make_dev(microsoft, [5, 0, 1, 2, 3, 4], dev_size=2)
    published["dev"] = published["dev"].replace(PAIRS[5].encode(), PAIRS[5].encode() + b"\n")
    with pytest.raises(DataError, match=r"the published dev file differs from Microsoft's lines in its order"):
        published_split(microsoft, published)


def test_a_changed_file_is_refused_naming_both_hashes():
    good = b"the file docs/data.md describes\n"
    assert mrpc_data.pinned("a file", good, sha256(good)) == good
    changed = good.replace(b"describes", b"described")
    with pytest.raises(DataError, match=rf"a file has SHA-256 {sha256(changed)}, expected {sha256(good)}") as error:
        mrpc_data.pinned("a file", changed, sha256(good))
    assert "fix: " in str(error.value)


# --- the real files: ../shared/data, rebuilt from their own pairs and the published order ------------------


def run_on(line: str) -> list[str]:
    """Line 2124 of the training file: a pair whose newline is missing, then the next pair."""
    fields = line.split("\t")
    if len(fields) == 5:
        return [line]
    assert len(fields) == 9, line  # the first pair's last field ends with the second pair's label
    return ["\t".join(fields[:4] + [fields[4][:-1]]), "\t".join([fields[4][-1], *fields[5:]])]


@pytest.fixture(scope="module")
def shared_files() -> dict[str, bytes]:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return {split: (SHARED / name).read_bytes() for split, (name, _) in BUILT.items()}


def test_the_shared_files_are_the_pinned_ones(shared_files):
    assert {split: sha256(data) for split, data in shared_files.items()} == {s: h for s, (_, h) in BUILT.items()}


def test_the_shared_files_are_rebuilt_from_their_pairs_in_the_published_order(shared_files):
    pairs = {}
    for split, data in shared_files.items():
        lines = data.decode().removesuffix("\n").split("\n")[1:]
        pairs[split] = [pair for line in lines for pair in run_on(line)]
    assert (len(pairs["dev"]), len(pairs["train"])) == (400, 3676)  # 4,076: Microsoft's training file
    last = next(run_on(line)[0] for line in shared_files["train"].decode().split("\n") if line.count("\t") == 8)
    # A stand-in for Microsoft's file: the same pairs in another order, its last pair the one that ran on.
    everything = [pair for pair in pairs["dev"] + pairs["train"] if pair != last] + [last]
    microsoft = microsoft_file(everything)
    built = published_split(microsoft, {split: BOM + data for split, data in shared_files.items()})
    assert built == shared_files
    assert TrainingFile.parse(microsoft).pairs[-1].startswith("0\t453575\t453448\t")


# --- the sources: downloads over real HTTP on loopback, the installer opened by cabextract ------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test's output stays the test's
        pass


@pytest.fixture
def upstream(tmp_path):
    """A real HTTP server on loopback serving tmp_path/upstream: the upstream files."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_without_network_the_command_says_so_and_how_to_get_the_files(tmp_path, monkeypatch, capsys):
    nowhere = f"http://127.0.0.1:{closed_port()}/"
    monkeypatch.setattr(mrpc_data, "MICROSOFT", mrpc_data.Source("x.msi", nowhere + "x.msi", "0" * 64))
    assert mrpc_data.main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not download {nowhere}x.msi (ConnectError")
    assert "fix: run `python -m tools.mrpc_data --out DIR` on a host with internet" in err and "--sources" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_changed_upstream_file_is_downloaded_then_refused_naming_both_hashes(tmp_path, upstream):
    folder, url = upstream
    (folder / "dev.txt").write_bytes(b"changed upstream\n")
    source = mrpc_data.Source("dev.txt", url + "dev.txt", sha256(b"as published\n"))
    sources = tmp_path / "sources"
    sources.mkdir()
    with httpx.Client() as client:
        path = mrpc_data.fetch(client, source, sources)
        changed = sha256(b"changed upstream\n")
        with pytest.raises(DataError, match=rf"dev\.txt has SHA-256 {changed}, expected {source.sha256}"):
            mrpc_data.pinned(str(path), path.read_bytes(), source.sha256)
        gone = mrpc_data.Source("gone.txt", url + "gone.txt", source.sha256)
        with pytest.raises(DataError, match=r"gone\.txt answered 404: the file has moved or is gone"):
            mrpc_data.fetch(client, gone, sources)
    assert path.read_bytes() == b"changed upstream\n"


def make_installer(path: Path, members: dict[str, bytes]) -> Path:
    """A cabinet holding `members`, wrapped in other bytes as the .msi wraps its cabinet."""
    folder = path.parent / "members"
    folder.mkdir()
    for name, data in members.items():
        (folder / name).write_bytes(data)
    cabinet = path.parent / "members.cab"
    subprocess.run(["gcab", "-c", "-z", str(cabinet), *members], cwd=folder, check=True)
    path.write_bytes(b"\xd0\xcf\x11\xe0" + bytes(4092) + cabinet.read_bytes() + bytes(512))
    return path


@needs_cab_tools
def test_only_the_training_file_is_taken_out_of_the_installer(tmp_path):
    train = microsoft_file(PAIRS)
    installer = make_installer(tmp_path / "corpus.msi", {mrpc_data.TRAIN_MEMBER: train, TEST_MEMBER: b"test"})
    assert mrpc_data.training_member(installer) == train


@needs_cab_tools
def test_an_installer_without_the_training_file_is_refused(tmp_path):
    installer = make_installer(tmp_path / "corpus.msi", {TEST_MEMBER: b"test"})
    with pytest.raises(DataError, match=rf"corpus\.msi holds no training file {mrpc_data.TRAIN_MEMBER}"):
        mrpc_data.training_member(installer)


@needs_cab_tools
def test_the_command_rebuilds_the_files_from_sources_brought_by_hand(tmp_path, monkeypatch, capsys):
    train = microsoft_file(PAIRS)
    published = make_dev(train, [2, 4, 5, 0, 3, 1], dev_size=2)
    sources = tmp_path / "sources"
    sources.mkdir()
    make_installer(sources / mrpc_data.MICROSOFT.name, {mrpc_data.TRAIN_MEMBER: train, TEST_MEMBER: b"test"})
    nowhere = f"http://127.0.0.1:{closed_port()}/"  # nothing is downloaded: the sources are all there
    lf = train.replace(b"\r\n", b"\n")
    monkeypatch.setattr(mrpc_data, "MICROSOFT", mrpc_data.Source(mrpc_data.MICROSOFT.name, nowhere, sha256(lf)))
    pins = {}
    for split, data in published.items():
        name = f"abcnn_{split}.txt"
        (sources / name).write_bytes(data)
        pins[split] = mrpc_data.Source(name, nowhere + name, sha256(data))
    monkeypatch.setattr(mrpc_data, "PUBLISHED", pins)
    expected = {split: data.removeprefix(BOM) for split, data in published.items()}
    built = {split: (BUILT[split][0], sha256(data)) for split, data in expected.items()}
    monkeypatch.setattr(mrpc_data, "BUILT", built)
    out = tmp_path / "out"
    assert mrpc_data.main(["--out", str(out), "--sources", str(sources)]) == 0
    assert {split: (out / name).read_bytes() for split, (name, _) in built.items()} == expected
    printed = capsys.readouterr().out
    assert f"{out / 'msr_paraphrase_train.tsv'}  sha256 {built['train'][1]}" in printed
