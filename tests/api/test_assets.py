"""``/v1/assets`` over HTTP, on both backends: every accepted kind, kinds
judged by bytes not names, the refusals (SVG, bombs, sizes, quota) in the
API's error shape, idempotent re-uploads, tenant isolation, paging, deletes,
and uploads refused at the limit without being read whole."""

from __future__ import annotations

import io
from typing import Any

import pytest

from api import create_app
from core.config import Settings
from tests.support.assets import (
    image_bytes,
    pdf_bytes,
    png_claiming,
    pptx_bytes,
    svg_bytes,
    zip_bomb_pptx,
)
from tests.support.clients import Tenant, assert_error, fetch, locked

KINDS = [
    ("photo.png", image_bytes("PNG"), "png", "image/png"),
    ("photo.jpg", image_bytes("JPEG"), "jpeg", "image/jpeg"),
    ("photo.webp", image_bytes("WEBP"), "webp", "image/webp"),
    ("anim.gif", image_bytes("GIF"), "gif", "image/gif"),
    ("doc.pdf", pdf_bytes(), "pdf", "application/pdf"),
    (
        "deck.pptx",
        pptx_bytes(),
        "pptx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ),
]


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    return locked(settings)


def _app(settings: Settings, **update: Any) -> Any:
    return create_app({"TESTING": True, "SETTINGS": locked(settings, **update)})


def _multipart(client: Any, data: bytes, name: str = "file.bin", mime: str = "") -> Any:
    return client.post(
        "/v1/assets",
        data={"file": (io.BytesIO(data), name, mime or "application/octet-stream")},
        content_type="multipart/form-data",
    )


@pytest.mark.parametrize(("name", "data", "kind", "media"), KINDS)
def test_every_kind_uploads_and_reads_back(
    app: Any, name: str, data: bytes, kind: str, media: str
) -> None:
    acme = Tenant(app, "acme").client
    response = _multipart(acme, data, name)
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["kind"] == kind and body["media_type"] == media
    assert body["size_bytes"] == len(data) and body["owner"] == "acme"
    assert response.headers["Location"] == f"/v1/assets/{body['id']}"
    assert acme.get(f"/v1/assets/{body['id']}").get_json() == body
    got = fetch(acme, body["content_url"])
    assert got.status_code == 200 and got.get_data() == data
    assert got.mimetype == media
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    disposition = got.headers.get("Content-Disposition", "")
    assert disposition.startswith("attachment") == (kind in {"pdf", "pptx"})


def test_a_raw_body_uploads_and_the_same_bytes_again_are_the_same_asset(app: Any) -> None:
    acme = Tenant(app, "acme").client
    data = image_bytes("PNG", (20, 10))
    first = acme.post("/v1/assets", data=data, content_type="image/png")
    assert first.status_code == 201
    again = _multipart(acme, data, "copy.png")
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert first.get_json()["width"] == 20 and first.get_json()["height"] == 10


def test_the_kind_comes_from_the_bytes_not_the_name_or_declared_type(app: Any) -> None:
    acme = Tenant(app, "acme").client
    response = _multipart(acme, pdf_bytes(), "photo.png", "image/png")
    assert response.status_code == 201
    assert response.get_json()["kind"] == "pdf"
    got = fetch(acme, response.get_json()["content_url"])
    assert got.mimetype == "application/pdf"
    assert got.headers["Content-Disposition"].startswith("attachment")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (svg_bytes(), "unsupported_asset_type"),
        (b"just some text", "unsupported_asset_type"),
        (png_claiming(100_000, 100_000), "asset_too_many_pixels"),
        (zip_bomb_pptx(), "invalid_asset"),
        (b"", "invalid_asset"),
    ],
)
def test_refused_bytes_answer_422(app: Any, data: bytes, code: str) -> None:
    acme = Tenant(app, "acme").client
    error = assert_error(acme.post("/v1/assets", data=data), 422, code)
    assert error["details"][0]["field"] == "file"
    assert acme.get("/v1/assets").get_json()["assets"] == []


def test_the_pixel_cap_is_a_setting(settings: Settings) -> None:
    app = _app(settings, max_asset_pixels=64 * 48 - 1)
    acme = Tenant(app, "acme").client
    error = assert_error(
        acme.post("/v1/assets", data=image_bytes("PNG", (64, 48))), 422, "asset_too_many_pixels"
    )
    assert "SLIDEFARM_MAX_ASSET_PIXELS" in error["message"]


@pytest.mark.parametrize("form", ["raw", "multipart"])
def test_an_upload_is_refused_with_413_one_byte_past_the_limit(
    settings: Settings, form: str
) -> None:
    data = pdf_bytes()
    app = _app(settings, max_asset_bytes=len(data))
    acme = Tenant(app, "acme").client

    def send(body: bytes) -> Any:
        if form == "raw":
            return acme.post("/v1/assets", data=body)
        return _multipart(acme, body)

    assert send(data).status_code == 201
    error = assert_error(send(data + b"\n"), 413, "asset_too_large")
    assert "SLIDEFARM_MAX_ASSET_BYTES" in error["message"]


def test_images_have_their_own_smaller_limit(settings: Settings) -> None:
    image = image_bytes("PNG")
    app = _app(settings, max_image_asset_bytes=len(image) - 1)
    acme = Tenant(app, "acme").client
    error = assert_error(acme.post("/v1/assets", data=image), 413, "asset_too_large")
    assert "SLIDEFARM_MAX_IMAGE_ASSET_BYTES" in error["message"]
    assert acme.post("/v1/assets", data=pdf_bytes()).status_code == 201


class EndlessZeros(io.RawIOBase):
    """An upload that never ends, counting what the server read of it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = len(buffer)
        buffer[:n] = b"\x00" * n
        self.read_bytes += n
        return n


def test_a_huge_declared_upload_is_refused_unread(settings: Settings) -> None:
    app = _app(settings, max_asset_bytes=1 << 20)
    acme = Tenant(app, "acme").client
    stream = EndlessZeros()
    response = acme.post(
        "/v1/assets",
        data=b"",
        environ_overrides={"wsgi.input": stream, "CONTENT_LENGTH": str(5 << 30)},
    )
    assert_error(response, 413, "asset_too_large")
    assert stream.read_bytes == 0


def test_an_endless_chunked_upload_is_cut_at_the_limit(settings: Settings) -> None:
    limit = 2 << 20  # over the app's 1 MiB JSON limit: assets have their own
    app = _app(settings, max_asset_bytes=limit)
    acme = Tenant(app, "acme").client
    stream = EndlessZeros()
    response = acme.post(
        "/v1/assets",
        data=b"",
        environ_overrides={
            "wsgi.input": stream,
            "wsgi.input_terminated": True,
            "HTTP_TRANSFER_ENCODING": "chunked",
        },
    )
    assert_error(response, 413, "asset_too_large")
    assert limit < stream.read_bytes <= limit + 2 * 64 * 1024
    assert not list((settings.output_dir / "assets" / ".incoming").iterdir())


def test_other_routes_keep_the_1_mib_body_limit(app: Any) -> None:
    acme = Tenant(app, "acme").client
    big = b'{"title": "' + b"x" * (1 << 20) + b'"}'
    assert_error(acme.post("/v1/jobs", data=big, content_type="application/json"), 413)


def test_another_tenants_asset_is_404_everywhere(app: Any) -> None:
    acme, globex = Tenant(app, "acme").client, Tenant(app, "globex").client
    asset = acme.post("/v1/assets", data=pdf_bytes()).get_json()
    for url in (f"/v1/assets/{asset['id']}", asset["content_url"]):
        assert_error(globex.get(url), 404, "asset_not_found")
    assert_error(globex.delete(f"/v1/assets/{asset['id']}"), 404, "asset_not_found")
    assert globex.get("/v1/assets").get_json()["assets"] == []
    # The same bytes from another tenant are that tenant's own asset.
    theirs = globex.post("/v1/assets", data=pdf_bytes())
    assert theirs.status_code == 201 and theirs.get_json()["id"] != asset["id"]
    assert acme.get(f"/v1/assets/{asset['id']}").status_code == 200
    assert_error(acme.get("/v1/assets/not-a-uuid"), 404, "asset_not_found")


def test_list_pages_with_a_cursor(app: Any) -> None:
    acme = Tenant(app, "acme").client
    ids = {
        acme.post("/v1/assets", data=image_bytes("PNG", (5 + n, 5))).get_json()["id"]
        for n in range(5)
    }
    seen: list[str] = []
    url = "/v1/assets?limit=2"
    while True:
        page = acme.get(url).get_json()
        seen += [a["id"] for a in page["assets"]]
        if page["next_cursor"] is None:
            break
        url = f"/v1/assets?limit=2&cursor={page['next_cursor']}"
    assert len(seen) == 5 and set(seen) == ids
    assert_error(acme.get("/v1/assets?cursor=nope"), 400, "invalid_cursor")
    assert_error(acme.get("/v1/assets?limit=0"), 400, "invalid_parameter")


def test_delete_answers_204_then_404_and_409_while_a_queued_job_uses_it(app: Any) -> None:
    from storage.assets import AssetStore

    tenant = Tenant(app, "acme")
    acme = tenant.client
    svc = app.extensions["slidefarm"]
    used = acme.post("/v1/assets", data=pdf_bytes()).get_json()
    job = tenant.submit()
    AssetStore(svc.store, svc.settings.output_dir).link(job["job_id"], [used["id"]])
    assert_error(acme.delete(f"/v1/assets/{used['id']}"), 409, "asset_in_use")
    free = acme.post("/v1/assets", data=image_bytes("PNG")).get_json()
    assert acme.delete(f"/v1/assets/{free['id']}").status_code == 204
    assert_error(acme.get(f"/v1/assets/{free['id']}"), 404, "asset_not_found")
    assert_error(acme.delete(f"/v1/assets/{free['id']}"), 404, "asset_not_found")


def test_the_stored_bytes_quota_answers_413(settings: Settings) -> None:
    first, second = pdf_bytes(pages=1), pdf_bytes(pages=3)
    app = _app(settings, max_asset_storage_bytes=len(first) + len(second) - 1)
    acme = Tenant(app, "acme").client
    assert acme.post("/v1/assets", data=first).status_code == 201
    error = assert_error(acme.post("/v1/assets", data=second), 413, "asset_quota_exceeded")
    assert "SLIDEFARM_MAX_ASSET_STORAGE_BYTES" in error["message"]
    # Re-uploading what is stored costs nothing.
    assert acme.post("/v1/assets", data=first).status_code == 200


# -- decks that name assets ------------------------------------------------------


def _post_deck(client: Any, deck: dict[str, Any]) -> Any:
    return client.post("/v1/jobs", json=deck)


def _linked(app: Any, job_id: str) -> list[str]:
    from sqlalchemy import select

    from storage.models import job_assets_table

    svc = app.extensions["slidefarm"]
    with svc.store.db.transaction(single=True) as conn:
        return sorted(
            conn.execute(
                select(job_assets_table.c.asset_id).where(job_assets_table.c.job_id == job_id)
            ).scalars()
        )


def test_a_document_deck_links_its_source_and_images_at_submission(app: Any) -> None:
    acme = Tenant(app, "acme").client
    document = acme.post("/v1/assets", data=pdf_bytes()).get_json()
    logo = acme.post("/v1/assets", data=image_bytes("PNG")).get_json()
    response = _post_deck(acme, {"source": {"asset": document["id"]}, "slides": [{"duration": 5}]})
    assert response.status_code == 202, response.get_data(as_text=True)
    job = response.get_json()
    assert job["title"] == "Untitled presentation"
    assert _linked(app, job["job_id"]) == [document["id"]]
    written = _post_deck(
        acme,
        {
            "title": "Logos",
            "slides": [
                {"title": "One", "image": logo["id"]},
                {"title": "Two", "image": logo["id"], "layout": "left", "body": "text"},
            ],
        },
    )
    assert written.status_code == 202, written.get_data(as_text=True)
    assert _linked(app, written.get_json()["job_id"]) == [logo["id"]]
    # Linked to a queued job: neither can be deleted under it.
    for asset in (document, logo):
        assert_error(acme.delete(f"/v1/assets/{asset['id']}"), 409, "asset_in_use")


def test_a_deck_naming_an_unusable_asset_is_422_and_makes_no_job(app: Any) -> None:
    acme, globex = Tenant(app, "acme").client, Tenant(app, "globex").client
    image = acme.post("/v1/assets", data=image_bytes("PNG")).get_json()
    document = acme.post("/v1/assets", data=pdf_bytes()).get_json()
    theirs = globex.post("/v1/assets", data=pdf_bytes(pages=3)).get_json()
    missing = "00000000-0000-4000-8000-000000000000"
    cases = [
        ({"source": {"asset": missing}}, "source.asset", "asset_not_found"),
        ({"source": {"asset": theirs["id"]}}, "source.asset", "asset_not_found"),
        ({"source": {"asset": image["id"]}}, "source.asset", "wrong_asset_kind"),
        (
            {"title": "t", "slides": [{"title": "a"}, {"image": document["id"]}]},
            "slides.1.image",
            "wrong_asset_kind",
        ),
        ({"title": "t", "slides": [{"image": missing}]}, "slides.0.image", "asset_not_found"),
    ]
    for deck, field, kind in cases:
        error = assert_error(_post_deck(acme, deck), 422, "validation_failed")
        assert [(d["field"], d["type"]) for d in error["details"]] == [(field, kind)], deck
        if kind == "asset_not_found":  # another tenant's reads exactly like a missing one
            named = deck["source"]["asset"] if "source" in deck else missing
            assert error["details"][0]["message"] == f"no asset {named}"
    assert acme.get("/v1/jobs").get_json()["jobs"] == []


def test_a_document_past_the_deck_limits_is_422_before_any_render(settings: Settings) -> None:
    app = _app(settings, max_video_seconds=10.0)
    acme = Tenant(app, "acme").client
    big = acme.post("/v1/assets", data=pptx_bytes(slides=5)).get_json()
    assert big["pages"] == 5
    error = assert_error(_post_deck(acme, {"source": {"asset": big["id"]}}), 422)
    assert error["details"][0]["type"] == "too_long"
    assert "SLIDEFARM_MAX_VIDEO_SECONDS" in error["details"][0]["message"]
    # More overrides than pages: the worker would refuse it, so the API does.
    error = assert_error(
        _post_deck(acme, {"source": {"asset": big["id"]}, "slides": [{"duration": 1.0}] * 6}), 422
    )
    assert error["details"] == [
        {
            "field": "slides",
            "message": "the deck sets 6 slides but the document has only 5 pages",
            "type": "too_many_overrides",
        }
    ]
    # A PDF's pages are counted by the first worker that reads it; from then
    # on its decks are checked here too.
    from storage.assets import AssetStore

    document = acme.post("/v1/assets", data=pdf_bytes()).get_json()
    assert document["pages"] is None
    svc = app.extensions["slidefarm"]
    assert AssetStore(svc.store, svc.settings.output_dir).record_pages(document["id"], 300)
    error = assert_error(_post_deck(acme, {"source": {"asset": document["id"]}}), 422)
    assert error["details"][0]["type"] == "too_many_pages"
    # Shorter pages fit: 5 x 2 s.
    fits = _post_deck(acme, {"source": {"asset": big["id"]}, "slides": [{"duration": 2.0}] * 5})
    assert fits.status_code == 202, fits.get_data(as_text=True)


def test_a_document_deck_may_only_override_what_a_page_lacks(app: Any) -> None:
    acme = Tenant(app, "acme").client
    document = acme.post("/v1/assets", data=pdf_bytes()).get_json()
    error = assert_error(
        _post_deck(acme, {"source": {"asset": document["id"]}, "slides": [{"body": "no"}]}), 422
    )
    assert "may set only audio, duration, narration, notes, title, transition" in str(
        error["details"]
    )
    error = assert_error(_post_deck(acme, {"title": "t", "slides": [{"caption": "x"}]}), 422)
    assert "need an image" in str(error["details"])
    error = assert_error(
        _post_deck(acme, {"title": "t", "slides": [{"image": "http://example.com/a.png"}]}), 422
    )
    assert error["details"][0]["field"] == "slides.0.image"
