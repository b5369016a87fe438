"""`python -m mlserver` (or `mlbroker-worker`, installed): serve a model through the broker from
this machine (PC, VM or Colab)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

MODEL_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_WEIGHTS = 0, 1, 2, 3

EPILOG = """\
environment:
  BROKER_URL         the broker's base URL, when --broker-url is not given
  BROKER_WORKER_KEY  a worker key of the broker (one of its BROKER_WORKER_KEYS); read from the
                     environment only, so it never shows in the process list
  BROKER_FUNCTION_KEY  the app's function key, when its worker routes sit behind the platform's keys
                     too (BROKER_WORKER_AUTH_LEVEL=function); sent as x-functions-key

built-in handlers:
  echo           returns each payload unchanged (params: sleep_ms, fail, retryable); no TensorFlow
  resnet50       ImageNet classification -> JSON top-k (params: top_k); --weights imagenet|PATH|none
  deeplabv3plus  Pascal VOC segmentation -> PNG mask, overlay or JSON (params: output);
                 --weights PRESET|DIR|PATH|none; --option input_size=N (default 512)
  saved          any saved Keras (.keras, .h5) or TensorFlow SavedModel image model: --weights PATH;
                 output by its shape: classification JSON (params: top_k), a mask PNG or JSON
                 (params: output), else raw JSON; --labels, --input-size, --scale

exit status: 0 stopped by a signal (work in hand finished or given back); 2 bad arguments or
configuration (including a key or URL the broker refuses); 3 the weights cannot be had
("mlserver: weights unavailable: ..."); 1 anything else.
"""


def program() -> str:
    """How the user started this: `python -m mlserver` from the repository, or the installed command."""
    started = os.path.basename(sys.argv[0])
    return f"python -m {__package__}" if started == "__main__.py" else started


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program(), epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a model through the broker: long-poll it for tasks, run them in batches, "
                    "put the results back. Stop with SIGTERM or Ctrl+C.")
    parser.add_argument("--broker-url", default=os.environ.get("BROKER_URL"), metavar="URL",
                        help="the broker's base URL, e.g. https://APP.azurewebsites.net/api "
                             "(default: $BROKER_URL)")
    parser.add_argument("--model", required=True, metavar="NAME",
                        help="the model name clients submit to (?model=NAME); also picks the built-in "
                             "handler of that name unless --handler is given")
    parser.add_argument("--handler", metavar="NAME|module:Class",
                        help="echo, resnet50, deeplabv3plus, saved, or your own Handler subclass as module:Class "
                             "(default: the --model name)")
    parser.add_argument("--weights", metavar="W",
                        help="the handler's weights: a name (resnet50: imagenet; deeplabv3plus: a keras-hub "
                             "preset), a local file or directory, or none for random weights "
                             "(default: the handler's own)")
    parser.add_argument("--batch", type=int, default=8, metavar="N",
                        help="claim and run up to N tasks at once, 1-32 (default 8)")
    parser.add_argument("--max-batch-delay-ms", type=int, default=0, metavar="MS",
                        help="dynamic batching: a batch short of N may wait up to MS milliseconds for tasks "
                             "that are arriving, then claims once more to fill; never when tasks are rarer "
                             "than one per MS, so a lone task goes at once; 0-10000 (default 0: never wait)")
    parser.add_argument("--lease", type=int, default=60, metavar="S",
                        help="seconds a claimed task is held before the broker hands it out again, "
                             "5-3600; renewed every S/2 seconds while the task is in hand (default 60)")
    parser.add_argument("--wait", type=int, default=10, metavar="S",
                        help="seconds one long-poll waits for a task, 0-60; a stop waits at most this "
                             "long for a poll in flight (default 10)")
    parser.add_argument("--idle-after", type=float, default=30, metavar="S",
                        help="seconds without work after which the worker stops long-polling (a billed "
                             "Functions execution) and watches storage for work instead; 0 never (default 30)")
    parser.add_argument("--watch-interval", type=float, default=0.5, metavar="S",
                        help="while idle, how often storage is looked at for work (a blob read each time; "
                             "default 0.5)")
    parser.add_argument("--idle-check", type=float, default=60, metavar="S",
                        help="while idle, how often the broker is asked anyway, for work no signal announced "
                             "(a task whose lease ran out) (default 60)")
    parser.add_argument("--max-batch-mib", type=int, default=2048, metavar="N",
                        help="large payloads (fetched from storage) held for one batch at most, in MiB; the "
                             "batch's first task always comes, the rest past this are given back (default 2048)")
    parser.add_argument("--metrics-port", type=int, metavar="N",
                        help="serve Prometheus metrics on this port (/metrics): tasks by outcome, img/s, batch "
                             "fill, queue wait, lease renewals; needs prometheus-client (default: off)")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR",
                        help="the address the metrics endpoint binds (default 127.0.0.1; 0.0.0.0 in a container)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a handler option, repeatable (deeplabv3plus: input_size=N)")
    parser.add_argument("--labels", metavar="FILE",
                        help="saved: class names, one per line (default: the index as text)")
    parser.add_argument("--input-size", metavar="WxH",
                        help="saved: the image size the model takes, where its input shape leaves it open")
    parser.add_argument("--scale", choices=("unit", "symmetric", "imagenet", "none"),
                        help="saved: pixel scaling - unit 0..1 (default), symmetric -1..1, imagenet "
                             "(Keras caffe-style), none 0..255")
    parser.add_argument("--status-interval", type=float, default=30, metavar="S",
                        help="seconds between status lines: done, failed, img/s, batch fill, queue wait "
                             "(default 30)")
    parser.add_argument("--decode-threads", type=int, metavar="N",
                        help="tasks of a batch downloaded and decoded at once, while the model runs the last "
                             "batch, each thread holding one payload and its decoded form (1-32; default: 1 on "
                             "a CPU, where the model wants the cores, and up to 4, one per core, on a GPU)")
    parser.add_argument("--upload-threads", type=int, default=4, metavar="N",
                        help="threads that encode and put results in the background (default 4)")
    args = parser.parse_args(argv)
    problems = [
        (not args.broker_url, "--broker-url (or BROKER_URL) is required"),
        (len(args.model) > 40 or not MODEL_NAME.fullmatch(args.model),
         "--model must be lowercase letters and digits in groups joined by single hyphens, at most 40 characters"),
        (not 1 <= args.batch <= 32, "--batch must be from 1 to 32"),
        (not 0 <= args.max_batch_delay_ms <= 10_000, "--max-batch-delay-ms must be from 0 to 10000"),
        (not 5 <= args.lease <= 3600, "--lease must be from 5 to 3600 seconds"),
        (not 0 <= args.wait <= 60, "--wait must be from 0 to 60 seconds"),
        (args.status_interval <= 0, "--status-interval must be positive"),
        (not 1 <= args.upload_threads <= 64, "--upload-threads must be from 1 to 64"),
        (args.decode_threads is not None and not 1 <= args.decode_threads <= 32, "--decode-threads must be from 1 to 32"),
        (args.idle_after < 0, "--idle-after must be 0 (never) or a number of seconds"),
        (not 0.05 <= args.watch_interval <= 60, "--watch-interval must be from 0.05 to 60 seconds"),
        (not 1 <= args.idle_check <= 3600, "--idle-check must be from 1 to 3600 seconds"),
        (args.max_batch_mib < 1, "--max-batch-mib must be at least 1"),
        (args.metrics_port is not None and not 0 <= args.metrics_port <= 65535, "--metrics-port must be a port number"),
        (any("=" not in option for option in args.option), "--option takes KEY=VALUE"),
    ]
    for failed, message in problems:
        if failed:
            parser.error(message)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings repeat what the worker says
    log = logging.getLogger("mlserver")

    # Imported here so that --help and argument errors answer at once.
    from .broker_api import BrokerClient, Refused
    from .fetcher import Claiming
    from .handlers import HandlerNotFound, handler_class
    from .handlers.base import BadOption, WeightsUnavailable
    from .worker import Worker

    key = os.environ.get("BROKER_WORKER_KEY")
    if not key:
        return _fail(EXIT_CONFIG, "BROKER_WORKER_KEY is not set: set it to one of the broker's worker keys")
    metrics = None
    if args.metrics_port is not None:
        from .metrics import Metrics, MetricsUnavailable

        try:
            metrics = Metrics(args.batch)
            port = metrics.serve(args.metrics_port, args.metrics_host)
        except MetricsUnavailable as exc:
            return _fail(EXIT_CONFIG, str(exc))
        except OSError as exc:
            return _fail(EXIT_CONFIG, f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc.strerror or exc}")
        log.info("metrics on http://%s:%d/metrics", args.metrics_host, port)
    spec = args.handler or args.model
    try:
        cls = handler_class(spec)
        options = dict(option.split("=", 1) for option in args.option)
        for name in ("labels", "input_size", "scale"):  # the saved handler's flags, as options
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        handler = cls(weights=args.weights, options=options, batch_size=args.batch)
        handler.served_as = args.model
        log.info("loading handler %s (weights: %s)", spec, handler.weights or "none needed")
        handler.load()
    except HandlerNotFound as exc:
        return _fail(EXIT_CONFIG, f"{exc}")
    except BadOption as exc:
        return _fail(EXIT_CONFIG, f"{exc}")
    except WeightsUnavailable as exc:
        return _fail(EXIT_WEIGHTS, f"weights unavailable: {exc}; {handler.weights_hint}")
    device = handler.device()
    decode_threads = args.decode_threads or default_decode_threads(device)
    log.info("device: %s; decoding %d task(s) of a batch at once", device, decode_threads)

    client = BrokerClient(args.broker_url, key, pool_size=args.upload_threads + 2,
                          function_key=os.environ.get("BROKER_FUNCTION_KEY") or None)
    worker = Worker(client, handler, Claiming(args.model, args.batch, args.wait, args.lease, args.idle_after,
                                              args.watch_interval, args.idle_check, args.max_batch_mib * 2**20,
                                              args.max_batch_delay_ms / 1000, decode_threads),
                    args.status_interval, args.upload_threads, metrics)
    fatal = worker.run()
    client.close()
    if metrics is not None:
        metrics.close()
    if isinstance(fatal, Refused):
        hint = " (check BROKER_WORKER_KEY)" if fatal.status == 401 else " (check --broker-url; it ends in /api)"
        return _fail(EXIT_CONFIG, f"the broker refused this worker: {fatal}{hint}")
    if fatal is not None:
        return _fail(EXIT_ERROR, f"stopped by an unexpected error: {type(fatal).__name__}: {fatal}")
    return EXIT_OK


def default_decode_threads(device: str) -> int:
    """1 on a CPU (more would take cores from the model); on a GPU one per core, up to 4, so that the
    next batch is decoded while the GPU runs this one."""
    if not device.startswith("GPU"):
        return 1
    return max(1, min(4, usable_cores()))


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _fail(code: int, message: str) -> int:
    print(f"mlserver: {message}", file=sys.stderr, flush=True)
    return code


def entry() -> None:
    """The installed command `mlbroker-worker`."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
