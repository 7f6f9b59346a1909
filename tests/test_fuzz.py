"""Arbitrary bytes and arbitrary YAML: only the project's own, one-line errors ever come out."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layout.core.config_file import load_config, valid_paths
from layout.core.errors import ConfigError, DataError
from models.data.idx import decompress, parse_idx

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def idx_like() -> st.SearchStrategy[bytes]:
    """Bytes that are often nearly valid IDX: a plausible header with random dims, type and payload."""
    header = st.tuples(st.sampled_from([0, 1]), st.sampled_from([0, 8, 9, 11, 12, 13, 14, 7]),
                       st.integers(0, 4)).flatmap(
        lambda t: st.tuples(st.just(t), st.lists(st.integers(0, 6), min_size=t[2], max_size=t[2])))
    return st.one_of(
        st.binary(max_size=64),
        st.tuples(header, st.binary(max_size=300)).map(
            lambda h: bytes([0, h[0][0][0], h[0][0][1], h[0][0][2]]) + struct.pack(f">{len(h[0][1])}I", *h[0][1])
            + h[1]),
    )


@FUZZ
@given(idx_like(), st.booleans())
def test_the_idx_reader_raises_only_data_errors(raw, compress):
    data = gzip.compress(raw) if compress else raw
    try:
        array = parse_idx(decompress(data, "fuzz"), "fuzz")
    except DataError as e:
        assert "\n" not in str(e) and "fuzz" in str(e)
    else:
        assert isinstance(array, np.ndarray)


@FUZZ
@given(st.binary(max_size=200))
def test_damaged_gzip_streams_raise_only_data_errors(tail):
    try:
        decompress(b"\x1f\x8b" + tail, "fuzz")
    except DataError as e:
        assert "\n" not in str(e)


KEYS = [p for p in valid_paths() if "." in p]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-5, 300), max_size=4),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def nested(pairs: list[tuple[str, object]]) -> dict:
    raw: dict = {}
    for dotted, value in pairs:
        node = raw
        *sections, leaf = dotted.split(".")
        for section in sections:
            node = node.setdefault(section, {}) if isinstance(node.get(section, {}), dict) else {}
        node[leaf] = value
    return raw


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS + ["train.nope", "trian.epochs", "layout.forces.zap"]), VALUES),
                max_size=5))
def test_the_config_loader_raises_only_config_errors(tmp_path_factory, pairs):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump(nested(pairs)))
    try:
        load_config(path)
    except ConfigError as e:
        assert "\n" not in str(e)


@FUZZ
@given(st.text(max_size=80))
def test_arbitrary_text_files_and_overrides_raise_only_config_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text)
    for overrides in ((), (text,), (f"train.epochs={text}",)):
        try:
            load_config(path, overrides)
        except ConfigError as e:
            assert "\n" not in str(e)
