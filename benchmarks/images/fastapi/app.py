"""The model of files/model served by FastAPI, as the reference project compared with.

``POST /predict`` takes ``{"data": [x1, x2]}`` and answers ``{"output": y}``, or 400 with
``{"error": ...}``: the body is checked by the TorchServe handler's own ``parse_row``, so
both servers accept and refuse exactly the same requests. One request, one forward pass.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from modelserve import handler  # the platform's package, mounted on PYTHONPATH

MODEL_DIR = Path(os.environ.get("MODEL_DIR", "/model"))
model = handler.load_model(MODEL_DIR)
app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, str]:
    """Liveness, as TorchServe's /ping."""
    return {"status": "Healthy"}


@app.post("/predict")
async def predict(request: Request) -> JSONResponse:
    """One prediction, or 400 with the reason the body was refused."""
    try:
        row = handler.parse_row(await request.body())
    except handler.InvalidRequest as err:
        return JSONResponse({"error": str(err)}, status_code=400)
    with torch.inference_mode():
        output = float(model(torch.tensor([row], dtype=torch.float32)).reshape(-1)[0])
    if not math.isfinite(output):
        return JSONResponse({"error": "inputs overflow the model"}, status_code=400)
    return JSONResponse({"output": output})
