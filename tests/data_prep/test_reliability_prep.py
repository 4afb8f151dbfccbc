"""Reliability of data preparation: no stale reuse, clear errors for broken input, no empty splits."""

from __future__ import annotations

import glob
import gzip
import os

import numpy as np
import pytest

from data_prep import aliccp, ijcai18, kuairand
from data_prep.common import DataError, StreamSource


# --- the identity of a raw file changes whenever its content changes ---

def _flip(path: str, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 1]))


def test_identity_changes_with_content_past_the_first_mib(tmp_path):
    p = tmp_path / "round1_ijcai_18_train_20180301.txt"
    p.write_bytes(np.random.default_rng(0).integers(32, 127, 1_900_000, dtype=np.uint8).tobytes())
    before = StreamSource(str(p)).identity(p.name)
    st = os.stat(p)
    _flip(str(p), 1_500_000)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the content differs
    assert StreamSource(str(p)).identity(p.name) != before


def test_large_files_identity_uses_mtime_and_full_hash_sees_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(StreamSource, "WHOLE_HASH_MAX", 1 << 20)  # stand-in for a file above 64 MiB
    p = tmp_path / "big.csv"
    p.write_bytes(np.random.default_rng(1).integers(32, 127, 3 << 20, dtype=np.uint8).tobytes())
    st = os.stat(p)
    quick, full = StreamSource(str(p)).identity(p.name), StreamSource(str(p), full_hash=True).identity(p.name)
    _flip(str(p), 3 << 19)  # the middle: neither head nor tail
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert StreamSource(str(p)).identity(p.name) == quick  # the documented blind spot of the quick identity
    assert StreamSource(str(p), full_hash=True).identity(p.name) != full
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # any ordinary edit moves the mtime
    assert StreamSource(str(p)).identity(p.name) != quick


def test_changed_label_past_the_first_mib_is_not_reused(tmp_path):
    """End to end: an IJCAI-18 file of ~1.9 MB; one is_trade flipped near the end is seen."""
    from tests.data_prep.test_ijcai18 import FILE, make_rows, write_file

    rows = make_rows(7800)
    raw = tmp_path / "raw"
    raw.mkdir()
    write_file(str(raw / FILE), rows)
    r = len(rows) - 5
    # Precondition of the regression: the whole file is under the old 2 MiB "head + tail"
    # threshold and the flipped row starts past the first MiB (the old identity's blind spot).
    lines = open(raw / FILE, "rb").read().split(b"\n")
    row_offset = sum(len(line) + 1 for line in lines[: r + 1])  # header + rows before r
    assert os.path.getsize(raw / FILE) < 2 * 2**20 and row_offset > 2**20
    out = str(tmp_path / "out")
    s1 = ijcai18.prepare(out, raw_path=str(raw), num_shards=1)
    rows[r]["is_trade"] = "1" if rows[r]["is_trade"] == "0" else "0"
    write_file(str(raw / FILE), rows)
    s2 = ijcai18.prepare(out, raw_path=str(raw), num_shards=1)
    assert s2["fingerprint"] != s1["fingerprint"]
    pos = lambda s: sum(c["positives"] for per in s["counts"].values() for c in per.values())  # noqa: E731
    assert abs(pos(s2) - pos(s1)) == 1


# --- a truncated .gz gives an error naming the user's file, and leaves nothing behind ---

def _truncate_gz(path: str) -> str:
    gz = path + ".gz"
    with open(path, "rb") as f, gzip.open(gz, "wb") as g:
        g.write(f.read())
    os.remove(path)
    data = open(gz, "rb").read()
    open(gz, "wb").write(data[: len(data) // 2])
    return gz


def _no_part_files(root) -> list[str]:
    return glob.glob(os.path.join(str(root), "**", "*.part"), recursive=True)


def test_truncated_gz_aliccp(tmp_path):
    from tests.data_prep.test_aliccp import write_fixture

    raw = tmp_path / "raw"
    write_fixture(str(raw))
    gz = _truncate_gz(str(raw / "sample_skeleton_train.csv"))
    with pytest.raises(DataError, match=rf"{gz}: cannot read \(EOFError"):
        aliccp.prepare(str(tmp_path / "out"), raw_path=str(raw), min_freq=1, num_shards=1, workers=1)
    assert not _no_part_files(tmp_path)


def test_truncated_gz_ijcai18(tmp_path):
    from tests.data_prep.test_ijcai18 import FILE, make_rows, write_file

    raw = tmp_path / "raw"
    raw.mkdir()
    write_file(str(raw / FILE), make_rows(300))
    gz = _truncate_gz(str(raw / FILE))
    with pytest.raises(DataError, match=rf"{gz}: cannot read \(EOFError"):
        ijcai18.prepare(str(tmp_path / "out"), raw_path=str(raw), num_shards=1)


def test_truncated_gz_kuairand(tmp_path):
    from tests.data_prep.test_kuairand import write_fixture

    data = tmp_path / "raw" / "KuaiRand-1K" / "data"
    write_fixture(str(data), n_logs=400)
    gz = _truncate_gz(str(data / "log_standard_4_22_to_5_08_1k.csv"))
    with pytest.raises(DataError, match=rf"{gz}: cannot read \(EOFError"):
        kuairand.prepare(str(tmp_path / "out"), raw_path=str(tmp_path / "raw"), num_shards=1)


# --- a split that comes out empty is an error ---

def test_aliccp_empty_test_file_is_an_error(tmp_path):
    from tests.data_prep.test_aliccp import write_fixture

    raw = tmp_path / "raw"
    write_fixture(str(raw))
    open(raw / "sample_skeleton_test.csv", "w").close()
    with pytest.raises(DataError, match=r"split 'valid' is empty.*split 'test' is empty|split 'valid' is empty"):
        aliccp.prepare(str(tmp_path / "out"), raw_path=str(raw), min_freq=1, num_shards=1, workers=1)
    assert not os.path.exists(tmp_path / "out")


def test_empty_split_of_the_whole_array_writer_is_an_error(tmp_path):
    from data_prep.common import FeatureDef, write_dataset

    n = 20
    with pytest.raises(DataError, match=r"split 'test' is empty"):
        write_dataset(str(tmp_path / "out"), dataset="t", features=[FeatureDef("u", "categorical", 3)],
                      columns={"u": np.arange(n) % 3}, domain=np.zeros(n, np.int64), domain_names=["a"],
                      labels={"label": np.ones(n, np.float32)}, split=(np.arange(n) % 2).astype(np.int8),
                      vocabs={"u": ["<OOV>", "1", "2"]}, fp="x", metadata={}, progress=lambda m: None)
    assert not os.path.exists(tmp_path / "out")


# --- Ali-CCP validates every entry of a kept field, not only the last one ---

def _line(entries) -> bytes:
    fl = "\x01".join(f"{f}\x02{i}\x03{v}" for f, i, v in entries)
    return f"7,1,0,abc,{len(entries)},{fl}\n".encode()


@pytest.mark.parametrize("entries,needle", [
    ([("109_14", 500, "abc"), ("109_14", 501, "2.0"), ("205", 9, "1")], "109_14: value is not a number"),
    ([("210", "x1", "1"), ("210", 112, "1"), ("205", 9, "1")], "210: feature id is not a non-negative integer"),
    ([("205", 9, "1"), ("508", 3, "1e"), ("508", 4, "0.5")], "508: value is not a number"),
])
def test_aliccp_rejects_a_bad_entry_that_is_not_the_last_of_its_field(entries, needle):
    good = _line([("205", 9, "1"), ("109_14", 500, "0.5"), ("109_14", 501, "2.0")])
    rows = aliccp.parse_feature_block(good, 5, True)  # control: valid repeated entries, the last one wins
    assert rows["vals"][0, aliccp.DENSE_FIELDS.index("109_14")] == 2.0
    with pytest.raises(aliccp._Bad) as e:
        aliccp.parse_feature_block(good + _line(entries), 5, True)
    assert list(e.value.lines) == [1] and needle in e.value.lines[1]


# --- IJCAI-18's missing marker -1 in a dense shop column stays missing ---

def test_ijcai18_missing_dense_value_is_not_scaled_as_a_number(tmp_path):
    from mdr_tf.data import load_arrays
    from mdr_tf.schema import Schema
    from tests.data_prep.test_ijcai18 import FILE, make_rows, write_file

    rows = make_rows()
    rows[0]["shop_score_service"] = "-1"  # day 0: a train row
    raw = tmp_path / "raw"
    raw.mkdir()
    write_file(str(raw / FILE), rows)
    out = str(tmp_path / "out")
    ijcai18.prepare(out, raw_path=str(raw), num_shards=1)
    schema = Schema.load(out)
    x, _ = load_arrays(schema, "train")
    v = x["shop_score_service"]
    missing = np.isclose(v, -1.0)
    assert missing.sum() == 1  # the missing row keeps the documented fill
    real = v[~missing]
    assert real.min() == 0.0 and real.max() == 1.0  # real values keep the full [0, 1] range
    lo, hi = schema.raw["normalizers"]["shop_score_service"]["minmax"]
    assert lo > 0.5  # the range comes from real scores (>= 0.9 here), not from -1


# --- Taobao drops clicks whose embedding line was malformed; errors name the user's file ---

def test_taobao_skipped_embedding_line_counts_as_no_embedding(tmp_path):
    from data_prep import taobao
    from tests.data_prep.test_taobao import write_raw

    raw = write_raw(tmp_path / "dim", item_lines_extra=["999,0.5 0.5 0.5\n"])  # item 999: a 3-d line
    s = taobao.prepare(str(tmp_path / "o"), raw_path=raw, skip_bad_rows=True)
    assert s["skipped_bad_rows"] == 1
    vocab = open(os.path.join(str(tmp_path / "o"), "vocab", "item_id.txt")).read().split("\n")
    assert "999" not in vocab  # its clicks are dropped like those of an item without embedding
    assert s["pretrained_embeddings"]["item_id"]["ids_without_embedding"] == 0
    taobao.prepare(str(tmp_path / "k"), raw_path=raw, skip_bad_rows=True, require_embeddings=False)
    assert "999" in open(os.path.join(str(tmp_path / "k"), "vocab", "item_id.txt")).read().split("\n")  # control


def test_aliccp_error_in_a_compressed_input_names_the_users_file(tmp_path):
    from tests.data_prep.test_aliccp import write_fixture

    raw = tmp_path / "raw"
    write_fixture(str(raw))
    path = raw / "sample_skeleton_train.csv"
    lines = path.read_text().split("\n")
    lines[3] = lines[3].replace(",", ";", 1)  # line 4: too few comma fields
    path.write_text("\n".join(lines))
    with open(path, "rb") as f, gzip.open(str(path) + ".gz", "wb") as g:
        g.write(f.read())
    os.remove(path)
    with pytest.raises(DataError, match=rf"^{raw}/sample_skeleton_train.csv.gz:4: "):
        aliccp.prepare(str(tmp_path / "out"), raw_path=str(raw), min_freq=1, num_shards=1, workers=1)


def test_stale_work_directory_of_changed_input_is_removed(tmp_path):
    from data_prep.common import WorkDir

    out = str(tmp_path / "out")
    old = WorkDir(out, "aaaa")
    old.release()  # a failed run: its work directory stays
    held = WorkDir(out, "bbbb")  # a run still going on (lock held): kept
    WorkDir(out, "cccc").release()
    assert not os.path.exists(out + ".work-aaaa")
    assert os.path.exists(out + ".work-bbbb")
    held.release()


def test_movielens_join_errors_name_file_and_line(tmp_path):
    from tests.data_prep.test_movielens import RATINGS_1M, USERS_1M, _prep, write_ml1m

    raw = write_ml1m(tmp_path / "orphan.zip", extra_rating_lines=["99::3::3::978300000\n"])
    n = len(RATINGS_1M) + 1
    with pytest.raises(DataError, match=rf"orphan\.zip!ml-1m/ratings\.dat:{n}: user 99 is not in "
                                         r".*orphan\.zip!ml-1m/users\.dat"):
        _prep(tmp_path / "o", raw, version="1m")
    raw = write_ml1m(tmp_path / "empty.zip", ratings=[])
    with pytest.raises(DataError, match=r"empty\.zip!ml-1m/ratings\.dat: no ratings \(the file is empty\)"):
        _prep(tmp_path / "o2", raw, version="1m")
    u = USERS_1M[1]
    dup = str(tmp_path / "dup.zip")
    import zipfile
    with zipfile.ZipFile(write_ml1m(tmp_path / "d0.zip")) as z, zipfile.ZipFile(dup, "w") as out:
        for name in z.namelist():
            data = z.read(name)
            if name.endswith("users.dat"):
                data += "::".join(map(str, u)).encode() + b"\n"
            out.writestr(name, data)
    with pytest.raises(DataError, match=rf"dup\.zip!ml-1m/users\.dat:{len(USERS_1M) + 1}: duplicate user id {u[0]} "
                                        r"\(first on line 2\)"):
        _prep(tmp_path / "o3", dup, version="1m")


def test_kuairand_and_taobao_empty_files_are_named_as_empty(tmp_path):
    from pathlib import Path

    from data_prep import taobao
    from tests.data_prep.test_kuairand import write_fixture
    from tests.data_prep.test_taobao import write_raw

    data = tmp_path / "k" / "KuaiRand-1K" / "data"
    write_fixture(str(data))
    open(data / "log_standard_4_22_to_5_08_1k.csv", "w").close()
    with pytest.raises(DataError, match=r"log_standard_4_22_to_5_08_1k\.csv: empty file"):
        kuairand.prepare(str(tmp_path / "ko"), raw_path=str(tmp_path / "k"), num_shards=1)
    for fn in (taobao.CLICK_FILE, taobao.USER_EMB_FILE, taobao.ITEM_EMB_FILE):
        raw = write_raw(Path(tmp_path) / f"t-{fn}")
        open(os.path.join(raw, fn), "w").close()
        with pytest.raises(DataError, match=rf"{fn}: (empty file|no click rows \(empty file\?\))"):
            taobao.prepare(str(tmp_path / f"o-{fn}"), raw_path=raw)


# --- the documented line handling (split on "\n" only) holds ---

def test_parse_lines_keeps_line_numbers_across_unicode_line_breaks():
    from data_prep.sources import parse_lines

    text = "1::a\x85b::3\n2::c\u2028d::4\n3::e::x\n"
    with pytest.raises(DataError, match=r"f:3: field 'n' = 'x'"):
        parse_lines(text, "f", "::", ["id", "t", "n"], {"id": int, "n": int})
    cols, _ = parse_lines(text[:-9], "f", "::", ["id", "t", "n"], {"id": int, "n": int})
    assert cols["t"] == ["a\x85b", "c\u2028d"]
