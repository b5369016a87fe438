"""The Azure Functions entry point: the broker's HTTP functions, its cleanup timer and the webhook
deliveries (a queue trigger).

The functions are anonymous at the platform level; the app checks keys itself (docs/API.md).
"""

import azure.functions as func

from broker import cleanup, delivery, http, telemetry

telemetry.configure()  # traces to Application Insights when APPLICATIONINSIGHTS_CONNECTION_STRING is set
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(http.bp)
app.register_functions(cleanup.bp)
app.register_functions(delivery.bp)
