#!/usr/bin/env bash
# tests/mutation/run.sh - the mutation check: every one-line mutant listed in
# tests/mutation/mutants.txt must make at least one of its test commands fail.
#
# How to run (from anywhere; needs bash, python3 and a C++20 compiler with doctest):
#   tests/mutation/run.sh                      # every mutant, 2 in parallel
#   tests/mutation/run.sh --only backoff       # mutants whose name contains "backoff"
#   tests/mutation/run.sh --list               # list the mutants and check they are in sync
#   CXX=clang++ LEVEE_MUTATION_JOBS=4 tests/mutation/run.sh --keep
#
# What it does: each mutant is applied to a fresh COPY of include/ in a temp
# directory (the repository is never modified); the test targets the mutant
# names (tests/<name>.cpp linked with doctest's main, or examples/<name>.cpp
# with its arguments) are compiled against that copy (-O1, no sanitizers, no
# CMake: one compiler call per target) and run, each under a timeout (a hang
# counts as a failure, i.e. the mutant is caught). Before any mutant, every
# command runs once against the unmodified include/ and must pass; otherwise
# the check cannot judge anything and stops (exit 2).
#
# A test that fails to compile because one of its static_asserts fails with
# the mutant has caught it (at compile time); any other compile error is
# reported as DOES NOT COMPILE.
#
# Output: one line per mutant (caught by which command, SURVIVED, OUT OF SYNC
# when its original text is no longer found exactly once, DOES NOT COMPILE),
# then a summary with the wall time. Exit status: 0 when every mutant was
# caught; 1 when any survived, is out of sync or does not compile; 2 when
# the baseline fails or the mutants file is malformed.
#
# Environment: CXX (default: c++), LEVEE_MUTATION_JOBS (parallel mutants,
# default 2), LEVEE_MUTATION_TIMEOUT (seconds per test run, default 60),
# LEVEE_MUTATION_TRUST_BASELINE=1 (= --trust-baseline: skip the unmutated
# build and run; only where the same tests have just passed, as in CI).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 - "$@" <<'PY'
import argparse, concurrent.futures, os, re, shlex, shutil, signal, subprocess, sys, tempfile, time

root = os.getcwd()
ap = argparse.ArgumentParser(prog="tests/mutation/run.sh")
ap.add_argument("mutants", nargs="?", default="tests/mutation/mutants.txt")
ap.add_argument("--only", default=None, help="run only mutants whose name contains this text")
ap.add_argument("--list", action="store_true", help="list the mutants and check that they are in sync")
ap.add_argument("--keep", action="store_true", help="keep the temp directory (mutated copies, binaries, logs)")
ap.add_argument("--trust-baseline", action="store_true",
                default=os.environ.get("LEVEE_MUTATION_TRUST_BASELINE") == "1",
                help="skip building and running the unmutated tests (CI: the same tests just passed)")
ap.add_argument("--jobs", type=int, default=int(os.environ.get("LEVEE_MUTATION_JOBS", "2")))
args = ap.parse_args()
cxx = os.environ.get("CXX", "c++")
timeout = int(os.environ.get("LEVEE_MUTATION_TIMEOUT", "60"))
start = time.time()

def die(msg, code=2):
    print("mutation: " + msg, file=sys.stderr)
    sys.exit(code)

# ---- parse the mutants file
keys = ("name", "file", "from", "to", "tests")
mutants = []
text = open(args.mutants, encoding="utf-8").read()
for lineno_block in re.split(r"\n[ \t]*\n", text):
    m = {}
    for line in lineno_block.split("\n"):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or key not in keys:
            die(f"{args.mutants}: bad line {line!r} (expected one of {', '.join(keys)} followed by ':')")
        if key in m:
            die(f"{args.mutants}: {key!r} given twice in the mutant {m.get('name', '?')!r}")
        m[key] = value[1:] if value.startswith(" ") else value
    if not m:
        continue
    missing = [k for k in keys if k not in m]
    if missing:
        die(f"{args.mutants}: mutant {m.get('name', '?')!r} lacks {', '.join(missing)}")
    if m["from"] == m["to"]:
        die(f"{args.mutants}: mutant {m['name']!r} changes nothing")
    m["commands"] = [shlex.split(c) for c in m["tests"].split(";") if c.strip()]
    if not m["commands"]:
        die(f"{args.mutants}: mutant {m['name']!r} names no test")
    mutants.append(m)
names = [m["name"] for m in mutants]
if len(set(names)) != len(names):
    die(f"{args.mutants}: duplicate mutant names")
if args.only:
    mutants = [m for m in mutants if args.only in m["name"]]
if not mutants:
    die("no mutant selected")

def source_of(target):
    for d, is_test in (("tests", True), ("examples", False)):
        p = os.path.join(root, d, target + ".cpp")
        if os.path.isfile(p):
            return p, is_test
    return None, False

# ---- sync check: the original text must occur exactly once
for m in mutants:
    path = os.path.join(root, m["file"])
    if not m["file"].startswith("include/") or not os.path.isfile(path):
        m["status"] = f"OUT OF SYNC: {m['file']} is not a file under include/"
        continue
    n = open(path, encoding="utf-8").read().count(m["from"])
    if n != 1:
        m["status"] = (f"OUT OF SYNC: original text found {n} times in {m['file']}: {m['from'].strip()!r}")
        continue
    unknown = [c[0] for c in m["commands"] if source_of(c[0])[0] is None]
    if unknown:
        m["status"] = f"OUT OF SYNC: no tests/ or examples/ source for {', '.join(unknown)}"
if args.list:
    for m in mutants:
        print(f"{m['name']}: {m['file']} -> {'; '.join(' '.join(c) for c in m['commands'])}"
              + (f"  [{m['status']}]" if "status" in m else ""))
    sys.exit(1 if any("status" in m for m in mutants) else 0)

work = tempfile.mkdtemp(prefix="levee-mutation-")
def cleanup():
    if args.keep:
        print(f"mutation: kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)

def run(cmd, log, cwd=None, limit=None):
    """Runs cmd with output to log; returns (exit status or 'timeout', seconds)."""
    t0 = time.time()
    with open(log, "ab") as out:
        out.write(("+ " + " ".join(shlex.quote(c) for c in cmd) + "\n").encode())
        out.flush()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=cwd, start_new_session=True)
        try:
            rc = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = "timeout"
        out.write(f"= {rc} after {time.time() - t0:.1f} s\n".encode())
    return rc, time.time() - t0

test_main = os.path.join(work, "test_main.o")
def build(target, include_dir, out_dir, log):
    src, is_test = source_of(target)
    exe = os.path.join(out_dir, target)
    cmd = [cxx, "-std=c++20", "-O1", "-g0", "-w", "-I", include_dir, src]
    if is_test:
        cmd.append(test_main)
    cmd += ["-pthread", "-o", exe]
    rc, secs = run(cmd, log)
    return (exe if rc == 0 else None), secs

def tail(log, n=15):
    with open(log, errors="replace") as f:
        return "".join(f.readlines()[-n:])

try:
    pending = [m for m in mutants if "status" not in m]
    # ---- baseline: every command passes on the unmodified headers
    rc, _ = run([cxx, "-std=c++20", "-O1", "-g0", "-c", os.path.join(root, "tests", "test_main.cpp"),
                 "-o", test_main], os.path.join(work, "test_main.log"))
    if rc != 0:
        die("cannot compile tests/test_main.cpp:\n" + tail(os.path.join(work, "test_main.log")))
    base_dir = os.path.join(work, "baseline")
    os.makedirs(base_dir)
    targets = sorted({c[0] for m in pending for c in m["commands"]})
    commands = sorted({tuple(c) for m in pending for c in m["commands"]})
    if args.trust_baseline:
        targets, commands = [], []
        print("mutation: baseline trusted (--trust-baseline): not rebuilt", flush=True)
    print(f"mutation: baseline: building {len(targets)} targets with {cxx} -O1 ({args.jobs} in parallel)",
          flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        built = dict(zip(targets, ex.map(
            lambda t: build(t, os.path.join(root, "include"), base_dir, os.path.join(base_dir, t + ".log"))[0],
            targets)))
    broken = [t for t, exe in built.items() if exe is None]
    if broken:
        die("baseline does not compile: " + ", ".join(broken) + "\n" +
            tail(os.path.join(base_dir, broken[0] + ".log")))
    def run_baseline(c):
        log = os.path.join(base_dir, "run-" + re.sub(r"[^A-Za-z0-9_.-]", "_", "_".join(c)) + ".log")
        return c, run([built[c[0]]] + list(c[1:]), log, cwd=base_dir, limit=timeout), log
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        for c, (rc, secs), log in ex.map(run_baseline, commands):
            if rc != 0:
                die(f"baseline fails: {' '.join(c)} exited with {rc} on the unmodified headers "
                    "(fix the test first; mutants cannot be judged)\n" + tail(log))
    print(f"mutation: baseline passes ({time.time() - start:.0f} s); {len(pending)} mutants", flush=True)

    # ---- mutants
    def judge(i, m):
        t0 = time.time()
        d = os.path.join(work, f"m{i:02d}")
        inc = os.path.join(d, "include")
        shutil.copytree(os.path.join(root, "include"), inc)
        path = os.path.join(d, m["file"])
        src = open(path, encoding="utf-8").read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(src.replace(m["from"], m["to"], 1))
        log = os.path.join(d, "log")
        exes = {}
        for c in m["commands"]:
            if c[0] not in exes:
                exes[c[0]], _ = build(c[0], inc, d, log)
            if exes[c[0]] is None and re.search(r"static assertion failed|static_assert failed", tail(log, 200)):
                return f"caught by {c[0]} at compile time (a static_assert)", time.time() - t0
            if exes[c[0]] is None:
                return f"DOES NOT COMPILE ({c[0]}): see {log}" if args.keep else \
                       f"DOES NOT COMPILE ({c[0]}):\n{tail(log)}", time.time() - t0
            rc, _ = run([exes[c[0]]] + c[1:], log, cwd=d, limit=timeout)
            if rc != 0:
                how = "timed out" if rc == "timeout" else f"exit {rc}"
                return f"caught by {' '.join(c)} ({how})", time.time() - t0
        return "SURVIVED", time.time() - t0

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        futures = {ex.submit(judge, i, m): m for i, m in enumerate(pending)}
        for f in concurrent.futures.as_completed(futures):
            m = futures[f]
            m["status"], secs = f.result()
            print(f"  [{secs:5.0f} s] {m['name']}: {m['status']}", flush=True)
finally:
    cleanup()

print("\nmutation: summary")
bad = 0
for m in mutants:
    ok = m["status"].startswith("caught")
    bad += not ok
    print(f"  {'ok  ' if ok else 'FAIL'} {m['name']}: {m['status'].splitlines()[0]}")
print(f"mutation: {len(mutants) - bad}/{len(mutants)} mutants caught in {time.time() - start:.0f} s")
sys.exit(1 if bad else 0)
PY
