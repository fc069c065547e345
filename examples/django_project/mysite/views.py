"""Two async views on the same table: one with native async SQL through aconn, one through Django's ORM."""

import dataclasses

from django.http import HttpRequest, JsonResponse

import aconn.django

from .models import Item


async def items_aconn(request: HttpRequest) -> JsonResponse:
    """Native async SQL: aiomysql's connection, from this request's aconn scope."""
    conn = await aconn.django.connections().connection()
    async with conn.cursor() as cur:
        await cur.execute("SELECT COUNT(*), CONNECTION_ID() FROM django_items")
        count, session = await cur.fetchone()
    return JsonResponse({"items": count, "via": "aconn", "session": session})


async def items_orm(request: HttpRequest) -> JsonResponse:
    """Django's ORM (its async API runs the query in a thread, on Django's own connection)."""
    return JsonResponse({"items": await Item.objects.acount(), "via": "orm"})


async def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dataclasses.asdict(aconn.django.connections().stats()))
