"""/v1/search: a loaded index searched by text or by image gives what Index.search gives; errors named."""

from __future__ import annotations

import pytest

from blipkit.index.index import Index
from tests.conftest import IMAGES


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, model_dirs):
    directory = tmp_path_factory.mktemp("search") / "photos.idx"
    Index.build([str(p) for p in IMAGES], directory, model=str(model_dirs["itm"]), progress=False)
    return directory


def test_search_by_text_and_by_image_equals_the_index(make_service, send, index_dir, images):
    index = Index.open(index_dir)
    service = make_service(indexes=[index])
    by_text = {"text": "a cat lying on a blanket", "k": 3, "rerank": 2}
    by_image = {"image": images[1], "k": 2}
    text, image, filtered = send(
        ("POST", "/v1/search", {"json": by_text}),
        ("POST", "/v1/search", {"json": by_image}),
        ("POST", "/v1/search", {"json": {"text": "a cat", "where": f"path LIKE '%{IMAGES[2].name}'"}}),
        service=service,
    )
    assert text.status_code == image.status_code == filtered.status_code == 200, text.text
    expected = Index.open(index_dir).search(text=by_text["text"], k=3, rerank=2)
    answer = text.json()
    assert answer["index"] == str(index_dir)
    assert [(hit["id"], hit["path"]) for hit in answer["results"]] == [(hit["id"], hit["path"]) for hit in expected]
    for hit, want in zip(answer["results"], expected, strict=True):
        for score in ("score", "itc", "itm"):
            assert (hit[score] is None) == (want[score] is None)
            assert hit[score] is None or hit[score] == pytest.approx(want[score], abs=1e-6)
    hits = image.json()["results"]
    assert hits[0]["path"] == str(IMAGES[1]) and len(hits) == 2  # an image finds itself first
    assert [hit["path"] for hit in filtered.json()["results"]] == [str(IMAGES[2])]


def test_search_errors_are_named(make_service, send, index_dir, images):
    with_index = make_service(indexes=[Index.open(index_dir)])
    both, neither, unknown, bad_filter = send(
        ("POST", "/v1/search", {"json": {"text": "a cat", "image": images[0]}}),
        ("POST", "/v1/search", {"json": {"k": 3}}),
        ("POST", "/v1/search", {"json": {"text": "a cat", "index": "elsewhere"}}),
        ("POST", "/v1/search", {"json": {"text": "a cat", "where": "no_such_column = 1"}}),
        service=with_index,
    )
    assert both.status_code == neither.status_code == 422
    assert "give text or image, one of them" in both.json()["error"]["message"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == f"no index 'elsewhere' is loaded; loaded: {index_dir}"
    assert bad_filter.status_code == 422 and "no_such_column" in bad_filter.json()["error"]["message"]
    (none,) = send(("POST", "/v1/search", {"json": {"text": "a cat"}}))
    assert none.status_code == 404
    assert none.json()["error"]["message"] == "no index is loaded: start the server with --index DIR"
