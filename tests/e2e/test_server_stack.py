"""What the production server stack (daphne) does with a request, on the real server."""


def test_a_post_body_reaches_django_whatever_its_content_type(server):
    """Twisted's own form parsing is off (rmm.asgi.skip_twisted_form_parsing): a body that is not
    the multipart form its content type claims reaches Django, which answers it, instead of
    Twisted refusing it with a bare 400 of its own."""
    r = server.request(
        "POST",
        "/api/v1/agent/heartbeat/",
        {"capacity": 1},
        headers={"Content-Type": "multipart/form-data; boundary=nothing"},
    )
    assert r.status == 401
    assert r.json() == {"detail": "Agent credential missing, wrong or revoked."}
