"""The CGI edges of ``sandrun serve``: what a guest may answer, what a request becomes, which route."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runner.plan import JobSpec, Limits
from runner.serve import FORBIDDEN_HEADERS, GuestOutputError, cgi_environ, match_route, parse_cgi


def test_a_cgi_answer_splits_into_status_headers_and_body() -> None:
    answer = parse_cgi(b"Status: 404 Not Found\nContent-Type: text/plain\n\nno\n\nsuch thing")
    assert answer.status == 404
    assert answer.headers == ((b"content-type", b"text/plain"),)
    assert answer.body == b"no\n\nsuch thing"  # blank lines in the body are the body's


def test_crlf_line_ends_and_repeated_headers_are_kept() -> None:
    answer = parse_cgi(b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nbody")
    assert answer.status == 200
    assert answer.headers == ((b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"))
    assert answer.body == b"body"


def test_a_location_without_status_is_a_redirect() -> None:
    assert parse_cgi(b"Location: /elsewhere\n\n").status == 302


@pytest.mark.parametrize(
    "output",
    [
        b"X-Evil: a\rSet-Cookie: stolen=1\n\nbody",  # a bare CR: a second header to some clients
        b"X-Evil: a\x00b\n\n",
        b"X-Evil: a\x7fb\n\n",
        b"X-A: 1\n folded: continuation\n\n",  # obsolete line folding
        b"Bad Name: 1\n\n",
        b"no colon here\n\n",
        b": empty name\n\n",
        b"Status: 101 Switching Protocols\n\n",
        b"Status: 99\n\n",
        b"Status: abc\n\n",
        b"Status: 2000\n\n",
        b"Content-Type: text/plain\nno blank line at all",
        b"just a body",
        b"".join(b"X-%d: 1\n" % i for i in range(101)) + b"\n",
        b"X-Big: " + b"a" * (70 * 1024) + b"\n\n",
    ],
)
def test_output_that_could_smuggle_or_is_not_cgi_is_refused(output: bytes) -> None:
    with pytest.raises(GuestOutputError):
        parse_cgi(output)


@pytest.mark.parametrize("name", sorted(FORBIDDEN_HEADERS))
def test_a_guest_may_not_set_a_header_the_server_owns(name: bytes) -> None:
    with pytest.raises(GuestOutputError):
        parse_cgi(name.title() + b": 1\n\nbody")


def _environ(headers: list[tuple[bytes, bytes]], body_length: int = 0) -> dict[str, str]:
    return cgi_environ(
        method="POST",
        script_name="/api",
        path_info="/x",
        query="a=1",
        headers=headers,
        body_length=body_length,
        client=("127.0.0.1", 5000),
        server=("127.0.0.1", 8080),
        scheme="http",
    )


def test_content_type_comes_from_the_real_header_only() -> None:
    assert "CONTENT_TYPE" not in _environ([])  # no default (WAGI's bug: a made-up type)
    env = _environ([(b"content-type", b"application/json"), (b"content-length", b"999")], body_length=5)
    assert env["CONTENT_TYPE"] == "application/json"
    assert env["CONTENT_LENGTH"] == "5"  # the body the guest reads, not what the client claimed
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env


def test_headers_become_http_variables_without_ambiguity() -> None:
    env = _environ(
        [
            (b"x-a", b"1"),
            (b"x-a", b"2"),
            (b"x_a", b"smuggled"),  # would also be HTTP_X_A: dropped
            (b"proxy", b"http://evil"),  # httpoxy
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ]
    )
    assert env["HTTP_X_A"] == "1, 2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_PROXY" not in env
    assert env["REQUEST_METHOD"] == "POST" and env["QUERY_STRING"] == "a=1"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/api", "/x")
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1" and env["REMOTE_ADDR"] == "127.0.0.1"


def _job(name: str, route: str) -> JobSpec:
    return JobSpec(
        id=f"m/{name}",
        manifest="m",
        name=name,
        tool="t",
        module="t.wasm",
        module_sha256="0" * 64,
        args=(),
        program_name="t",
        invoke=None,
        env=(),
        stdin=None,
        mounts=(),
        network=None,
        limits=Limits(fuel=None, memory=1 << 20, timeout_ms=1000, stack=1 << 19, output=1 << 20),
        needs=(),
        expect_exit_code=0,
        actions=(),
        score="0.0000",
        route=route,
    )


ROUTES = tuple((j.route or "", j) for j in (_job("deep", "/api/deep"), _job("api", "/api"), _job("all", "/")))


@pytest.mark.parametrize(
    ("path", "job", "script", "info"),
    [
        ("/api", "api", "/api", ""),
        ("/api/x", "api", "/api", "/x"),
        ("/api/deep", "deep", "/api/deep", ""),
        ("/api/deep/er", "deep", "/api/deep", "/er"),
        ("/api/deeper", "api", "/api", "/deeper"),  # a route matches whole segments only
        ("/apix", "all", "", "/apix"),
        ("/", "all", "", "/"),
    ],
)
def test_the_longest_route_wins(path: str, job: str, script: str, info: str) -> None:
    found = match_route(ROUTES, path)
    assert found is not None
    assert (found[0].name, found[1], found[2]) == (job, script, info)


def test_no_route_matches_outside_every_prefix() -> None:
    assert match_route(ROUTES[:2], "/other") is None


def test_a_plain_install_never_imports_the_serve_extra() -> None:
    code = (
        "import sys, runner.cli, runner.api, runner.executor; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'runner.serve') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
