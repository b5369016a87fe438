"""The broker's routes as tests exercise them: which methods each accepts, and a call of each kind
of key-protected route that needs no stored task to reach the key check."""

TASK = "0" * 32

METHODS = {"/predict": {"POST"}, "/getresult": {"GET"}, "/status": {"GET"}, "/cancel": {"POST"},
           "/getnexttask": {"GET", "POST"}, "/extendlease": {"POST"}, "/puttaskresult": {"POST"}, "/progress": {"POST"},
           "/health": {"GET"}, "/stats": {"GET"}, "/demo": {"GET"}, "/upload": {"POST"}, "/commit": {"POST"},
           "/watch": {"GET"}, "/token": {"POST"}, "/revoke": {"POST"}}

WORKER_ROUTES = [("GET", "/getnexttask?model=m&wait=0"), ("POST", "/getnexttask?model=m&wait=0"),
                 ("POST", f"/extendlease?task_id={TASK}&lease=x&seconds=5"),
                 ("POST", f"/puttaskresult?task_id={TASK}&lease=x"), ("GET", "/stats"), ("GET", "/watch?model=m"),
                 ("POST", f"/progress?task_id={TASK}&lease=x")]
CLIENT_ROUTES = [("POST", "/predict?model=m"), ("GET", f"/getresult?task_id={TASK}"),
                 ("GET", f"/status?task_id={TASK}"), ("POST", f"/cancel?task_id={TASK}"),
                 ("POST", "/upload?model=m"), ("POST", f"/commit?task_id={TASK}"), ("POST", "/token"),
                 ("POST", "/revoke")]
# The routes that take ?task_id= (the worker ones also ?lease=).
TASK_ROUTES = [("GET", "/getresult"), ("GET", "/status"), ("POST", "/cancel"),
               ("POST", "/extendlease"), ("POST", "/puttaskresult"), ("POST", "/commit"), ("POST", "/progress")]
