"""Replays, deterministically, the 502 that one run of ``bench/load_clinics.py`` saw on a
chunk PUT: nginx (``deploy/nginx/relaypacs.conf``: ``keepalive 32`` to the web processes,
nginx's upstream ``keepalive_timeout`` default of 60 s) reuses an idle connection that
uvicorn (its ``--timeout-keep-alive`` default of 5 s) closed a moment before. A streamed
chunk (``proxy_request_buffering off``) cannot be sent to another server once its body
has started, so the client gets 502 ``service_unavailable``.

The race needs nginx to take the idle connection before it has read uvicorn's close,
which a busy machine makes likely; here nginx is paused (SIGSTOP) for 2.5 s while the
request waits and uvicorn's 5 s timer fires, which makes it certain. With the shipped
conf's ``keepalive_timeout 3s`` nginx has closed the connection itself before that (the
second PUT is 200); without it (nginx's 60 s) it is 502. Extra arguments go to uvicorn,
e.g. ``--timeout-keep-alive 75`` (longer than nginx's 60 s, the other way to avoid it);
``--nginx-default-keepalive`` drops the conf's line to show the 502:

    .venv/bin/python bench/keepalive_race.py
    .venv/bin/python bench/keepalive_race.py --nginx-default-keepalive
    .venv/bin/python bench/keepalive_race.py --nginx-default-keepalive --timeout-keep-alive 75
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from bench import servers  # noqa: E402
from relaypacs.tests.deploy_support import render_nginx_conf, self_signed_certificate  # noqa: E402

APP = """\
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""
MAIN = """\
{user}
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/temp/body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
    include {site};
}}
"""
CHUNK_PATH = "/api/v1/upload/00000000-0000-0000-0000-000000000000/chunk?index={index}"
# uvicorn's default keep-alive is 5 s: the second request comes 4 s after the first, and
# nginx is paused across the moment uvicorn closes the idle connection.
IDLE_BEFORE_SECOND = 4.0
NGINX_PAUSE = 2.5


SHIPPED_TIMEOUT = "    keepalive_timeout 3s;\n"


def main(uvicorn_args: list[str]) -> int:
    default_keepalive = "--nginx-default-keepalive" in uvicorn_args
    uvicorn_args = [a for a in uvicorn_args if a != "--nginx-default-keepalive"]
    work = Path(tempfile.mkdtemp(prefix="relaypacs-keepalive-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        (work / "app.py").write_text(APP)
        (work / "temp").mkdir()
        upstream, http_port, https_port = servers.free_ports(3)
        web = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--port", str(upstream)]
            + ["--no-access-log", *uvicorn_args],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        processes.append(web)
        cert, key = self_signed_certificate(work / "tls")
        site = work / "site.conf"
        text = render_nginx_conf(
            upstreams=[upstream],
            http_port=http_port,
            https_port=https_port,
            cert=cert,
            key=key,
            access_log=work / "access.log",
        )
        if default_keepalive:
            if text.count(SHIPPED_TIMEOUT) != 1:
                raise SystemExit("deploy/nginx/relaypacs.conf has no upstream keepalive_timeout")
            text = text.replace(SHIPPED_TIMEOUT, "")
        site.write_text(text)
        main_conf = work / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        main_conf.write_text(MAIN.format(user=user, d=work, site=site))
        nginx = subprocess.Popen(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(work), "-c", str(main_conf)],
            start_new_session=True,
        )
        processes.append(nginx)
        servers.wait_until(
            lambda: requests.get(f"http://127.0.0.1:{http_port}/nginx-health", timeout=2).ok,
            what="nginx",
            process=nginx,
            log=work / "error.log",
        )
        servers.wait_until(
            lambda: requests.get(f"http://127.0.0.1:{upstream}/", timeout=2).ok,
            what="uvicorn",
            process=web,
            log=work / "error.log",
        )
        context = ssl.create_default_context(cafile=str(cert))
        client = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=30)
        body = os.urandom(1024 * 1024)
        headers = {"Content-Type": "application/octet-stream"}
        client.request("PUT", CHUNK_PATH.format(index=0), body=body, headers=headers)
        first = client.getresponse()
        first.read()
        time.sleep(IDLE_BEFORE_SECOND)
        os.kill(nginx.pid, signal.SIGSTOP)
        try:
            client.request("PUT", CHUNK_PATH.format(index=1), body=body, headers=headers)
            time.sleep(NGINX_PAUSE)
        finally:
            os.kill(nginx.pid, signal.SIGCONT)
        second = client.getresponse()
        second.read()
        errors = [
            line.split(", client:")[0]
            for line in (work / "error.log").read_text().splitlines()
            if "[error]" in line
        ]
        timeout = "60s (nginx's default)" if default_keepalive else "3s (as shipped)"
        print(
            f"nginx upstream keepalive_timeout {timeout}, uvicorn "
            f"{' '.join(uvicorn_args) or 'defaults'}: first PUT {first.status}, second PUT "
            f"({IDLE_BEFORE_SECOND:g} s later, nginx paused {NGINX_PAUSE:g} s) {second.status}"
        )
        print("nginx error log:", errors or "nothing")
        return 0 if second.status == 200 else 1
    finally:
        for process in processes:
            servers.stop_process(process, own_group=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
