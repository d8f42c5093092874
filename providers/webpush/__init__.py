"""Web Push (RFC 8030) with aes128gcm payload encryption (RFC 8291 / RFC 8188)
and VAPID (RFC 8292): ``providers.webpush.provider.WebPushProvider``."""

from providers.webpush.provider import MAX_BODY, MAX_PLAINTEXT, Subscription, WebPushProvider, parse_subscription

__all__ = ["MAX_BODY", "MAX_PLAINTEXT", "Subscription", "WebPushProvider", "parse_subscription"]
