#!/usr/bin/env python3
"""How long the request sent right after a client left a long turn waits,
against the real child directly (no coordinator), for two remedies a
coordinator could choose (docs/internals.md "A client that leaves"):

  free    the abandoned connection is closed 15 s into a FAKE_DELAY=90 turn
          and the next request goes to the same child (what the
          coordinator did before it restarted such children);
  finish  the abandoned connection is kept open until the turn ends, then
          the next request is sent.

Usage: scripts/measure-left-turn.py REALCHILD_DIR {free|finish} PORT
  REALCHILD_DIR: a real child set up by ../shared/realchild/setup.sh
  (e.g. .realchild/current); PORT, PORT+100 and PORT+200 must be free.
Prints one JSON line. Every process it starts carries a tag and is killed
at the end.
"""
import http.client, json, os, signal, socket, subprocess, sys, tempfile, time

LIMIT = 150  # seconds the next request may take (the child's own: 150-300)


def profile(path):
    cookie = {"name": "SID", "value": "s", "domain": ".google.com", "path": "/",
              "expires": time.time() + 30 * 86400, "httpOnly": False,
              "secure": True, "sameSite": "Lax"}
    with open(path, "w") as f:
        json.dump({"cookies": [cookie], "origins": []}, f)


def start(home, tag, port, auth):
    env = dict(os.environ, AISTUDIOPROXY_CHILD=tag, HOME=home)
    cmd = [os.path.join(home_dir, "run-real-child.sh"), "--server-port", str(port),
           "--stream-port", str(port + 100), "--camoufox-debug-port", str(port + 200),
           "--active-auth-json", auth, "--headless"]
    out = open(os.path.join(home, "child.log"), "w")
    subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                     start_new_session=True)
    began = time.time()
    while time.time() - began < 120:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the child was not ready within 120 s; its output: {home}/child.log")


def kill(tag):
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"AISTUDIOPROXY_CHILD={tag}".encode() in f.read().split(b"\0"):
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def body(text):
    return json.dumps({"model": "gemini-2.5-pro",
                       "messages": [{"role": "user", "content": text}]})


def main():
    global home_dir
    home_dir, mode, port = os.path.abspath(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    tmp = tempfile.mkdtemp(prefix="left-turn-")
    auth = os.path.join(tmp, "profile.json")
    profile(auth)
    tag = f"measure-left-turn/{os.getpid()}/0/1"
    try:
        start(tmp, tag, port, auth)
        s = socket.create_connection(("127.0.0.1", port))
        b = body("FAKE_DELAY=90 take your time").encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
        time.sleep(15)
        left = time.time()
        if mode == "finish":
            s.settimeout(LIMIT)
            got = b""
            while b"\r\n\r\n" not in got or not (b"Fake answer" in got or b"detail" in got):
                d = s.recv(65536)
                if not d:
                    break
                got += d
        s.close()
        sent = time.time()
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=LIMIT)
            c.request("POST", "/v1/chat/completions", body("next please"),
                      {"Content-Type": "application/json"})
            status = c.getresponse().status
        except OSError as e:
            status = f"no answer ({e})"
        print(json.dumps({"mode": mode, "next_status": status,
                          "next_answered_s_after_leaving": round(time.time() - left, 1),
                          "next_request_s": round(time.time() - sent, 1)}))
    finally:
        kill(tag)


if __name__ == "__main__":
    main()
