from django.urls import path

from . import views

app_name = "accounts"

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("password/reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path("password/reset/sent/", views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("password/reset/<uidb64>/<token>/", views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("password/reset/done/", views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("password/change/", views.PasswordChangeView.as_view(), name="password_change"),
    path("password/change/done/", views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("switch-bu/", views.switch_bu, name="switch_bu"),
    path("users/", views.users, name="users"),
    path("users/add/", views.user_add, name="user_add"),
    path("users/<int:membership_id>/role/", views.member_role, name="member_role"),
    path("users/<int:membership_id>/remove/", views.member_remove, name="member_remove"),
    path("users/<int:membership_id>/send-link/", views.member_send_link, name="member_send_link"),
    path("roles/new/", views.role_form, name="role_create"),
    path("roles/<int:role_id>/", views.role_form, name="role_edit"),
    path("roles/builtin/<slug:key>/", views.role_detail, name="role_builtin"),
    path("audit/", views.audit_log, name="audit_log"),
]
