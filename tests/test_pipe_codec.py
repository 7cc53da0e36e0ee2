"""The worker <-> job process pipe codec (core/payload.py), without processes: every message
survives a round trip, and frames come out whole however the reads cut the byte stream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freelance_rz.core import payload as pl

RUN_IDS = st.integers(min_value=0, max_value=2**64 - 1)
TO_CHILD = st.one_of(
    st.builds(pl.Run, RUN_IDS, st.binary(max_size=300)),
    st.builds(pl.Run, RUN_IDS, st.binary(max_size=300),  # traced: a JOB's W3C traceparent
              st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=255), RUN_IDS),
    st.builds(pl.Cancel, RUN_IDS),
    st.builds(pl.Setup, st.lists(st.text(max_size=20), max_size=3), st.none() | st.text(max_size=20),
              st.sampled_from(pl.POOLS), st.integers(1, 1000), st.lists(st.text(max_size=30), max_size=3)),
)
FROM_CHILD = st.one_of(
    st.just(pl.Ready()),
    st.builds(pl.StartFailed, st.text(max_size=100)),
    st.builds(pl.Progress, RUN_IDS, st.integers(0, 10**6) | st.floats(0, 1e6),
              st.none() | st.integers(0, 10**6), st.text(max_size=50)),
    st.builds(pl.Finished, RUN_IDS, st.booleans(), st.binary(max_size=300)),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@given(TO_CHILD)
def test_messages_to_a_job_process_round_trip(msg):
    (body,) = pl.FrameReader().feed(pl.encode_to_job_process(msg))
    assert pl.decode_to_job_process(body) == msg
    if isinstance(msg, pl.Run) and msg.traceparent is None:  # the hot path's decoder
        assert pl.decode_run(body) == (msg.run_id, msg.payload)


@given(FROM_CHILD)
def test_messages_from_a_job_process_round_trip(msg):
    (body,) = pl.FrameReader().feed(pl.encode_from_job_process(msg))
    assert pl.decode_from_job_process(body) == msg


@given(st.lists(st.one_of(TO_CHILD.map(pl.encode_to_job_process),
                          FROM_CHILD.map(pl.encode_from_job_process)), max_size=8),
       st.lists(st.integers(0, 10**6), max_size=12))
def test_frames_come_out_whole_however_the_reads_cut_them(frames, cuts):
    reader = pl.FrameReader()
    bodies = []
    for chunk in split(b"".join(frames), cuts):
        bodies += reader.feed(chunk)
        assert reader.wanted >= 0
    assert bodies == [frame[pl.FRAME_HEADER:] for frame in frames]
    assert reader.wanted == 0


def test_a_large_frame_says_how_much_it_still_wants():
    frame = pl.encode_run(7, b"x" * 100_000)
    reader = pl.FrameReader()
    assert reader.feed(frame[:1000]) == []
    assert reader.wanted == len(frame) - 1000
    assert reader.feed(frame[1000:]) == [frame[pl.FRAME_HEADER:]]


def test_an_unknown_message_is_a_bug_and_says_so():
    with pytest.raises(ValueError, match="unknown"):
        pl.decode_from_job_process(b"?")
    with pytest.raises(ValueError, match="unknown"):
        pl.decode_to_job_process(b"?")
