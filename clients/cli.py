"""`python -m clients` (or `mlbroker`, installed): predict files, look at tasks, fetch results, cancel. Errors are one line.

Exit codes: 0 all went well; 1 an error, or a task that failed, was cancelled, expired or timed out;
2 a usage error; 3 (`result`) the task has not finished yet; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time

from . import progress
from .client import DEFAULT_URL, BrokerClient
from .errors import BrokerError, BrokerHTTPError, TaskCancelled, TaskExpired, TaskFailed, TaskTimeout
from .outputs import Outputs
from .payload import extension_for, guess_content_type, read_payload
from .result import Result

PARALLEL_WAITS = 8  # long-polls held open at once; the other tasks wait their turn


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(f"{message} (see --help)")


def fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def json_text(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def printable_json(result: Result) -> str | None:
    """The result as indented JSON text, or None when it is not JSON (whatever its content type says)."""
    if not result.is_json:
        return None
    try:
        return json_text(result.json())
    except ValueError:
        return None


def parse_params(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise UsageError("--params is not valid JSON") from None
    if not isinstance(value, dict):
        raise UsageError("--params must be a JSON object, like '{\"top_k\": 3}'")
    return value


# ---- predict -------------------------------------------------------------------------------


def outcome(client: BrokerClient, task_id: str, deadline: float, poll: int, on_status):
    """The Result, or the BrokerError that ended the wait (failed, cancelled, timed out, unreachable)."""
    try:
        return client.wait(task_id, max(0.0, deadline - time.monotonic()), poll, on_status)
    except BrokerError as exc:
        return exc


def wait_all(client: BrokerClient, jobs: list[tuple[str, str]], timeout: float, poll: int, shown):
    """Yield (input, task id, outcome) as tasks finish, waiting on several at once."""
    deadline = time.monotonic() + timeout
    done: queue.Queue = queue.Queue()
    slots = threading.Semaphore(PARALLEL_WAITS)

    def run(name: str, task_id: str) -> None:
        with slots:
            done.put((name, task_id, outcome(client, task_id, deadline, poll,
                                             lambda document: shown.update(name, document))))

    for name, task_id in jobs:
        # Daemon threads: Ctrl-C must not wait for long-polls to come back.
        threading.Thread(target=run, args=(name, task_id), daemon=True).start()
    for _ in jobs:
        yield done.get()


def report(name: str, task_id: str, result, outputs: Outputs, count: int, shown) -> bool:
    """Write or print one outcome and say so; True if the task succeeded."""
    if isinstance(result, Result):
        text = printable_json(result)
        target = outputs.target(name, result, printable=text is not None)
        if target is None:
            print(text if count == 1 else json.dumps({"file": name, "task_id": task_id, "content_type":
                                                      result.content_type, "result": result.json()},
                                                     ensure_ascii=False), flush=True)
            shown.finished(name, "succeeded", f"succeeded (task {task_id})")
        else:
            shown.finished(name, "succeeded", f"succeeded -> {outputs.write(target, result)}")
        return True
    if isinstance(result, TaskFailed):
        shown.finished(name, "failed", f"task {task_id} failed: {result.error}")
    elif isinstance(result, TaskCancelled):
        shown.finished(name, "cancelled", str(result))
    elif isinstance(result, TaskExpired):
        shown.finished(name, "expired", str(result))
    elif isinstance(result, TaskTimeout):
        shown.finished(name, "timed out", f"task {task_id} did not finish in time; it may still finish: "
                                          f"{program()} result {task_id}")
    else:
        shown.finished(name, "error", str(result))
    return False


def predict(args, client: BrokerClient) -> int:
    params = parse_params(args.params)
    if args.webhook_events and not args.webhook:
        return fail("--webhook-events needs --webhook")
    inputs = []
    for name in args.files:
        try:  # large files stay on disk: they are uploaded from there, a block at a time
            large = os.path.getsize(name) > client.upload_above
            inputs.append((name, name, guess_content_type(name)) if large and os.access(name, os.R_OK)
                          else (name, *read_payload(name)))
        except OSError as exc:
            return fail(f"cannot read {name}: {exc.strerror or exc}")
    outputs = Outputs(args.out, len(inputs), args.model)
    shown = progress.display(len(inputs))
    ok = True
    jobs = []
    try:
        for name, payload, content_type in inputs:
            accepted: list[dict] = []
            try:
                task_id = client.submit(payload, args.model, content_type, params,
                                        on_upload=lambda done, total, name=name: shown.uploading(name, done, total),
                                        on_accepted=accepted.append, webhook=args.webhook,
                                        webhook_events=args.webhook_events, ttl=args.ttl)
            except BrokerHTTPError as exc:
                if exc.status in (401, 403):
                    raise  # the same for every file: stop now
                shown.finished(name, "error", f"not submitted: {exc}")
                ok = False
                continue
            jobs.append((name, task_id))
            shown.update(name, accepted[0] if accepted else {"task_id": task_id, "status": "queued"})
        poll = 2 if isinstance(shown, progress.Bar) or len(jobs) <= PARALLEL_WAITS else 10  # fresh news when it is read
        for name, task_id, result in wait_all(client, jobs, args.timeout, poll, shown):
            ok &= report(name, task_id, result, outputs, len(inputs), shown)
    finally:
        shown.close()
    return 0 if ok else 1


# ---- status, result, cancel ----------------------------------------------------------------


def status(args, client: BrokerClient) -> int:
    print(json_text(client.status(args.task_id)))
    return 0


def result(args, client: BrokerClient) -> int:
    if not 0 <= args.wait <= 60:
        raise UsageError("--wait must be from 0 to 60 seconds")
    found = client.result(args.task_id, args.wait)
    if found is None:
        state = client.status(args.task_id)["status"]
        return fail(f"task {args.task_id} is still {state}; ask again later (or use --wait)", 3)
    text = printable_json(found)
    if args.out:
        print(f"saved {found.save(args.out)}", file=sys.stderr)
    elif text is not None:
        print(text)
    elif found.media_type.startswith("text/"):
        sys.stdout.write(found.content.decode("utf-8", errors="replace"))
    else:
        print(f"saved {found.save(f'{args.task_id}{extension_for(found.content_type)}')}", file=sys.stderr)
    return 0


def cancel(args, client: BrokerClient) -> int:
    print(json_text(client.cancel(args.task_id)))
    return 0


# ---- the command line ----------------------------------------------------------------------


def subcommand(commands, name: str, run, help: str, task: bool = True) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help)
    if task:
        command.add_argument("task_id", metavar="ID")
    command.set_defaults(run=run)
    return command


def parser() -> argparse.ArgumentParser:
    top = Parser(prog=program(), description="Submit jobs to the broker and fetch their results.",
                 epilog=f"Environment: BROKER_URL (default {DEFAULT_URL}), BROKER_CLIENT_KEY (when the broker needs one).")
    top.add_argument("--broker-url", default=os.environ.get("BROKER_URL") or DEFAULT_URL,
                     help="the broker's base URL, ending in /api (default: $BROKER_URL or %(default)s)")
    commands = top.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = subcommand(commands, "predict", predict, "submit files and wait for their results", task=False)
    run.add_argument("files", nargs="+", metavar="FILE", help="input files (the content type comes from the name)")
    run.add_argument("--model", required=True, help="the model to run, e.g. resnet50, deeplabv3plus, echo")
    run.add_argument("--out", metavar="PATH|DIR",
                     help="where results go: a file for one input, a directory for several "
                          "(default: JSON to stdout, anything else to <input>.<model>.<ext> here)")
    run.add_argument("--params", metavar="JSON", help="a JSON object handed to the model, e.g. '{\"top_k\": 3}'")
    run.add_argument("--timeout", type=float, default=300, metavar="S",
                     help="seconds to wait for all results (default %(default)g)")
    run.add_argument("--ttl", type=int, metavar="S",
                     help="a deadline: a task not started within S seconds expires, one running then is cancelled")
    run.add_argument("--webhook", metavar="URL", help="also POST each task's events to this https URL (signed)")
    run.add_argument("--webhook-events", type=_events, metavar="EVENTS",
                     help="which: started,progress,completed (default completed)")
    subcommand(commands, "status", status, "print a task's status document")
    fetch = subcommand(commands, "result", result, "print or save a finished task's result")
    fetch.add_argument("--out", metavar="PATH", help="save the result here")
    fetch.add_argument("--wait", type=int, default=0, metavar="S",
                       help="wait up to S seconds (0-60) for the task to finish (default 0)")
    subcommand(commands, "cancel", cancel, "cancel a queued or running task")
    return top


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        with BrokerClient(args.broker_url, os.environ.get("BROKER_CLIENT_KEY") or None) as client:
            return args.run(args, client)
    except UsageError as exc:
        return fail(str(exc), 2)
    except BrokerError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        return fail(f"interrupted; submitted tasks go on ({program()} status ID)", 130)


def program() -> str:
    """How the user started this: `python -m clients` from the repository, or the installed command."""
    started = os.path.basename(sys.argv[0])
    return f"python -m {__package__}" if started == "__main__.py" else started


def entry() -> None:
    """The installed command `mlbroker`."""
    sys.exit(main())


def _events(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ("started", "progress", "completed")]
    if not names or unknown:
        raise argparse.ArgumentTypeError("events are started, progress and completed, comma-separated")
    return names
