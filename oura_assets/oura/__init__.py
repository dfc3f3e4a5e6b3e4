"""Talking to Oura: the OAuth application (`oauth`) and the API v2 client (`client`).

Both work against https://api.ouraring.com for real patients and against the bundled simulator alike; neither
knows which one it is talking to. Tokens at rest and their safe refresh live in `oura_assets.tokens`.
"""
