"""A job run from synchronous code (a management command, a worker): `python -m mysite.jobs`."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django.setup()

import aconn.django  # noqa: E402


async def count_items() -> int:
    conn = await aconn.django.connections().connection()  # inside the scope aconn.django.run() opened
    async with conn.cursor() as cur:
        await cur.execute("SELECT COUNT(*) FROM django_items")
        (count,) = await cur.fetchone()
    return int(count)


if __name__ == "__main__":
    print(f"items: {aconn.django.run(count_items)}")
