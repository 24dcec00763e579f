"""A signup service on Redis and SMTP, served by uvicorn in its own process and captured from FLUXRUN_* settings.

Both routes set keys, run a pipeline and send a welcome mail, then fail on a quota key nobody set.
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage

import aiosmtplib
import redis
import redis.asyncio
from fastapi import FastAPI

import fluxrun

if os.environ.get("FLUXRUN_DIR"):
    fluxrun.init()  # in the server process; a replay imports this module without capturing

app = FastAPI()
app.add_middleware(fluxrun.FluxRunMiddleware)


@app.post("/signup/{name}")
def signup(name: str) -> dict[str, int]:
    cache = redis.Redis.from_url(os.environ["CACHE_REDIS_URL"])
    cache.set(f"user:{name}", b"\x00\xffpending")
    count = cache.incr("signups")
    pipe = cache.pipeline()
    pipe.hset(f"profile:{name}", mapping={"name": name, "plan": "free"})
    pipe.expire(f"profile:{name}", 3600)
    pipe.execute()
    with smtplib.SMTP(os.environ["MAIL_HOST"], int(os.environ["MAIL_PORT"])) as smtp:
        smtp.login("signup-bot", os.environ["MAIL_PASSWORD"])
        smtp.sendmail("app@example.com", [f"{name}@example.com"], f"Subject: welcome\r\n\r\nYou are #{count}\r\n")
    quota = cache.get("quota")  # None: nobody set it
    return {"left": int(quota) - count}  # TypeError


@app.post("/async-signup/{name}")
async def async_signup(name: str) -> dict[str, int]:
    cache = redis.asyncio.Redis.from_url(os.environ["CACHE_REDIS_URL"])
    try:
        await cache.set(f"user:{name}", "pending")
        count = await cache.incr("signups")
        async with cache.pipeline(transaction=False) as pipe:
            await pipe.hset(f"profile:{name}", "name", name).expire(f"profile:{name}", 3600).execute()
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "app@example.com", f"{name}@example.com", "welcome"
        message.set_content(f"You are #{count}")
        await aiosmtplib.send(message, hostname=os.environ["MAIL_HOST"], port=int(os.environ["MAIL_PORT"]))
        quota = await cache.get("quota")
    finally:
        await cache.aclose()
    return {"left": int(quota) - count}  # TypeError
