"""Rebuild ../shared/data's MSR Paraphrase files from their public sources (docs/data.md says what they are).

    python -m tools.mrpc_data --out DIR [--sources DIR]

Needs internet (or --sources) and the `cabextract` program. It downloads Microsoft's MSRParaphraseCorpus.msi and
takes only its training file out (the corpus's test file is never extracted or read), downloads the dev/train
split that galsang/ABCNN published (MSRP_Corpus/, made by its make_dev.py), rebuilds both published files byte
for byte from Microsoft's lines in the published order, drops the UTF-8 byte-order mark they begin with, and
writes msr_paraphrase_train.tsv and msr_paraphrase_dev.tsv into DIR. Every source is pinned by SHA-256 and so is
each file written (the hashes of ../shared/data's files): a changed upstream file is refused, naming both hashes.

--sources DIR keeps the downloads there (default: a temporary folder, removed afterwards); a file already there
is used instead of downloading it, so a host without internet can be handed the three files (names below).

Why the published split is copied, not redrawn: make_dev.py shuffles with numpy's global generator and no seed,
so its split cannot be drawn again; the published files are the only record of which pairs are dev and in what
order. Why line 2124 of the training file holds two pairs: the copy of Microsoft's file that make_dev.py read
(MSRP_Corpus/msr_paraphrase_train_original.txt at the pinned commit) had no newline after its last pair, so that
pair runs into whichever pair the shuffle put after it; the rebuild reproduces that, as the hashes demand.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tasks.common.errors import PipelineError

# Microsoft's download (https://www.microsoft.com/en-us/download/details.aspx?id=52398). Its installer's hash
# is not pinned: no copy was reachable when this was written. What is pinned is the training file inside it.
MICROSOFT_MSI = "MSRParaphraseCorpus.msi"
MICROSOFT_URL = "https://download.microsoft.com/download/D/4/6/D46FF87A-F6B9-4252-AA8B-3604ED519838/" + MICROSOFT_MSI
# msr_paraphrase_train.txt's name in the installer's cabinet: GLUE's download_glue_data.py (nyu-mll/GLUE-baselines)
# takes it out with cabextract by this name. (GLUE's script itself downloads SentEval's copy, which is tokenized --
# 1,047,044 bytes, tensorflow/datasets url_checksums/glue.txt -- and so another text than Microsoft's.)
TRAIN_MEMBER = "_2DEC3DBE877E4DB192D17C0256E90F1D"
# SHA-256 of that file with CR LF made LF (BOM kept): three public copies agree -- magsail/MRPC's
# MRPC/msr_paraphrase_train.txt (`cabextract | tr -d '\r'`), wasiahmad/paraphrase_identification's, and
# Pzeyang/Paraphrase_Identification's first commit (CR LF, 1,026,746 bytes) once its CRs are removed.
MICROSOFT_TRAIN_SHA256 = "61a88818ec384d8465297dda1883b469f1b22d442ab90183d13e06233b180591"

# The commit of galsang/ABCNN that published the split (2017-03-29, "msrp corpus modified"); unchanged since.
ABCNN_COMMIT = "0d7b948084c276ca0c143b578ec2b442828225a2"
ABCNN_URL = f"https://raw.githubusercontent.com/galsang/ABCNN/{ABCNN_COMMIT}/MSRP_Corpus/"


@dataclass(frozen=True)
class Source:
    """A file downloaded into --sources: its name there, where it comes from, and its SHA-256 (the installer's:
    of the training file taken out of it, CR LF made LF)."""

    name: str
    url: str
    sha256: str


MICROSOFT = Source(MICROSOFT_MSI, MICROSOFT_URL, MICROSOFT_TRAIN_SHA256)
PUBLISHED = {
    "dev": Source(
        "abcnn_msr_paraphrase_dev.txt",
        ABCNN_URL + "msr_paraphrase_dev.txt",
        "5c953e3c562212e9c7552e89565e9e5a46b214897d307664c4e68b56792ee1de",
    ),
    "train": Source(
        "abcnn_msr_paraphrase_train.txt",
        ABCNN_URL + "msr_paraphrase_train.txt",
        "8d1b10abf424c5b90cb9894f14478be9935a9e99b44f80276d5fadb1a8696455",
    ),
}
# ../shared/data's files: what every measurement in docs/ was made on.
BUILT = {
    "dev": ("msr_paraphrase_dev.tsv", "98b35c3df85e88cb9348568ce7d0d505120757ee031b86974b33c2fd17d25b6a"),
    "train": ("msr_paraphrase_train.tsv", "c92c9220ac4a7aa1602e8d11309f49040ec5ea631e0a546d0597273b4f07722b"),
}
BOM = b"\xef\xbb\xbf"  # make_dev.py copied the header line with it into both files
TIMEOUT_S = 60.0


class DataError(PipelineError):
    """A source or a rebuilt file is not what docs/data.md says it is, or a source cannot be had."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pinned(what: str, data: bytes, expected: str) -> bytes:
    """data, when its SHA-256 is the expected one; else refused, naming both."""
    found = sha256(data)
    if found != expected:
        raise DataError(
            f"{what} has SHA-256 {found}, expected {expected}: it is not the file docs/data.md describes",
            fix="if the upstream file changed, its pairs or the split may have too: compare it with docs/data.md's "
            "sources before changing a pin in tools/mrpc_data.py; a half-downloaded file in --sources: delete it",
        )
    return data


def microsoft_text(raw: bytes) -> bytes:
    """Microsoft's training file with CR LF made LF, checked against its pin."""
    return pinned("Microsoft's msr_paraphrase_train.txt", raw.replace(b"\r\n", b"\n"), MICROSOFT.sha256)


# --- the split: pure functions of the bytes ---------------------------------------------------------------


@dataclass(frozen=True)
class TrainingFile:
    """Microsoft's training file as make_dev.py read it: the header line (with its BOM) and a line per pair.
    In the copy it read, the last pair had no newline after it."""

    header: str
    pairs: tuple[str, ...]

    @classmethod
    def parse(cls, text: bytes) -> TrainingFile:
        """Microsoft's file, with CR LF (as it ships) or LF line endings."""
        header, *pairs = text.replace(b"\r\n", b"\n").decode("utf-8").removesuffix("\n").split("\n")
        repeated = [pair for pair, n in Counter(pairs).items() if n > 1]
        if not pairs or repeated:
            raise DataError(f"Microsoft's training file holds {len(pairs)} pairs, {len(repeated)} of them twice")
        return cls(header, tuple(pairs))

    def order(self, published: bytes, what: str) -> list[str]:
        """The pairs of a published file, in its order; a line holding two pairs (the last pair run into the
        next, see the module's doc) gives both."""
        known, last = set(self.pairs), self.pairs[-1]
        header, *lines = published.decode("utf-8").split("\n")
        if header != self.header:
            raise DataError(f"line 1 of {what} is not the header of Microsoft's training file: {header[:80]!r}")
        if lines and lines[-1] == "":
            lines.pop()  # after the file's final newline
        found: list[str] = []
        for number, line in enumerate(lines, 2):
            if line in known:
                found.append(line)
            elif line.startswith(last) and line[len(last) :] in known:
                found += [last, line[len(last) :]]
            else:
                raise DataError(f"line {number} of {what} is no pair of Microsoft's training file: {line[:80]!r}")
        return found

    def render(self, order: list[str]) -> bytes:
        """A file as make_dev.py wrote it: the header, then each pair with the newline it had when read."""
        last = self.pairs[-1]
        return (self.header + "\n" + "".join(p if p == last else p + "\n" for p in order)).encode("utf-8")

    def check_partition(self, orders: dict[str, list[str]]) -> None:
        """Every pair of the training file in exactly one split, once: nothing missing, nothing added."""
        seen = Counter(pair for order in orders.values() for pair in order)
        twice = [pair for pair, n in seen.items() if n > 1]
        missing = [pair for pair in self.pairs if pair not in seen]
        if twice or missing:
            raise DataError(
                f"the published split is no partition of Microsoft's {len(self.pairs)} training pairs: "
                f"{len(twice)} pairs appear twice, {len(missing)} are missing (first: {(twice + missing)[0][:80]!r})"
            )


def published_split(microsoft: bytes, published: dict[str, bytes]) -> dict[str, bytes]:
    """../shared/data's files, by split, from Microsoft's training file and the published
    files: each published file must be Microsoft's lines in its order, byte for byte, and loses its BOM."""
    corpus = TrainingFile.parse(microsoft)
    orders = {split: corpus.order(data, f"the published {split} file") for split, data in published.items()}
    corpus.check_partition(orders)
    built = {}
    for split, data in published.items():
        rebuilt = corpus.render(orders[split])
        if rebuilt != data:
            at = next((i for i, (a, b) in enumerate(zip(rebuilt, data, strict=False)) if a != b), len(rebuilt))
            raise DataError(f"the published {split} file differs from Microsoft's lines in its order at byte {at}")
        built[split] = rebuilt.removeprefix(BOM)
    return built


# --- the sources: downloads, the installer, the files written ---------------------------------------------

NO_NETWORK_FIX = (
    "run `python -m tools.mrpc_data --out DIR` on a host with internet and copy DIR's two files here, or put the "
    f"three sources ({MICROSOFT.name}, {PUBLISHED['dev'].name}, {PUBLISHED['train'].name}; docs/data.md says "
    "where each comes from) in a folder and pass --sources FOLDER"
)


def fetch(client: httpx.Client, source: Source, sources: Path) -> Path:
    """The source's file in `sources`, downloaded unless it is there already."""
    path = sources / source.name
    if path.is_file():
        return path
    try:
        response = client.get(source.url)
        response.raise_for_status()
    except httpx.HTTPStatusError as error:
        raise DataError(
            f"{source.url} answered {error.response.status_code}: the file has moved or is gone",
            fix="docs/data.md names each source; find its new address, or bring the file with --sources",
        ) from None
    except httpx.HTTPError as error:
        raise DataError(f"could not download {source.url} ({type(error).__name__}: {error})", NO_NETWORK_FIX) from None
    path.write_bytes(response.content)
    return path


def training_member(msi: Path) -> bytes:
    """Microsoft's training file out of its installer: cabextract finds the cabinet inside the .msi. Only that
    member is extracted: the corpus's test file stays out of everything."""
    program = shutil.which("cabextract")
    if program is None:
        raise DataError(
            f"cabextract is not installed: it takes the training file out of {msi.name}",
            fix="apt-get install cabextract (Debian, Ubuntu) or brew install cabextract (macOS)",
        )
    done = subprocess.run([program, "-q", "-p", "-F", TRAIN_MEMBER, str(msi)], capture_output=True, timeout=120)
    if done.returncode or not done.stdout:
        said = done.stderr.decode(errors="replace").strip() or "nothing"
        raise DataError(
            f"{msi} holds no training file {TRAIN_MEMBER} (cabextract said: {said})",
            fix=f"delete {msi} to download it again; docs/data.md describes the installer",
        )
    return done.stdout


def rebuild(client: httpx.Client, sources: Path) -> dict[str, bytes]:
    """../shared/data's two files' bytes, by split, from the pinned sources (downloaded into `sources`)."""
    microsoft = microsoft_text(training_member(fetch(client, MICROSOFT, sources)))
    published = {}
    for split, source in PUBLISHED.items():
        path = fetch(client, source, sources)
        published[split] = pinned(f"{path} (galsang/ABCNN's {split} file)", path.read_bytes(), source.sha256)
    built = published_split(microsoft, published)
    for split, data in built.items():
        pinned(f"the rebuilt {BUILT[split][0]}", data, BUILT[split][1])
    return built


def write(out: Path, built: dict[str, bytes]) -> list[Path]:
    """The files written into `out`, each read back and checked against its pin."""
    paths = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for split, data in built.items():
            name, expected = BUILT[split]
            path = out / name
            path.write_bytes(data)
            pinned(str(path), path.read_bytes(), expected)
            paths.append(path)
    except OSError as error:
        raise DataError(f"could not write into {out}: {error}", fix="give --out a folder this user may write") from None
    return paths


@contextmanager
def sources_folder(given: Path | None):
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="mrpc-sources-") as folder:
        yield Path(folder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.mrpc_data", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the two .tsv files into")
    parser.add_argument("--sources", type=Path, help="folder for the downloads (kept); files there are used")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sources_folder(args.sources) as sources, httpx.Client(timeout=TIMEOUT_S, follow_redirects=True) as client:
            written = write(args.out, rebuild(client, sources))
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"{path}  sha256 {sha256(path.read_bytes())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
