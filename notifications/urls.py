from django.urls import path

from . import apis

# Mounted at api/v1/ (relaypacs/urls.py).
urlpatterns = [
    path("notifications", apis.NotificationListApi.as_view(), name="notifications-list"),
    path("notifications/stream", apis.notifications_stream, name="notifications-stream"),
    path(
        "notifications/push-subscriptions",
        apis.PushSubscriptionApi.as_view(),
        name="notifications-push-subscriptions",
    ),
    path("notifications/ticket", apis.StreamTicketApi.as_view(), name="notifications-ticket"),
    path(
        "notifications/read-all",
        apis.NotificationReadAllApi.as_view(),
        name="notifications-read-all",
    ),
    path(
        "notifications/<int:notification_id>/read",
        apis.NotificationReadApi.as_view(),
        name="notification-read",
    ),
    path(
        "notifications/<int:notification_id>/unread",
        apis.NotificationUnreadApi.as_view(),
        name="notification-unread",
    ),
]
