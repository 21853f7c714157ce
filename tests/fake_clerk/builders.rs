//! Object builders, shaped like the API's (and the fixtures' `data`).

use serde_json::{json, Value};

/// An Organization object.
pub fn org(id: &str, name: &str, created_at: i64, updated_at: i64) -> Value {
    let slug = name.to_lowercase().replace(' ', "-");
    json!({
        "object": "organization",
        "id": id,
        "name": name,
        "slug": slug,
        "image_url": format!("https://img.clerk.com/{slug}"),
        "has_image": true,
        "members_count": 1,
        "missing_member_with_elevated_permissions": false,
        "pending_invitations_count": 0,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": true,
        "public_metadata": {"stars": 4},
        "private_metadata": {},
        "created_by": "user_2creator000000000000000001",
        "role_set_key": null,
        "created_at": created_at,
        "updated_at": updated_at
    })
}

/// A User object with one (primary) email address.
pub fn user(id: &str, email: &str, first_name: &str, last_name: &str, created_at: i64, updated_at: i64) -> Value {
    let email_id = format!("idn_{}", id.trim_start_matches("user_"));
    json!({
        "object": "user",
        "id": id,
        "external_id": null,
        "primary_email_address_id": email_id,
        "primary_phone_number_id": null,
        "primary_web3_wallet_id": null,
        "username": null,
        "first_name": first_name,
        "last_name": last_name,
        "profile_image_url": format!("https://img.clerk.com/{id}"),
        "image_url": format!("https://img.clerk.com/{id}"),
        "has_image": true,
        "public_metadata": {},
        "private_metadata": null,
        "unsafe_metadata": {},
        "email_addresses": [{
            "id": email_id,
            "object": "email_address",
            "email_address": email,
            "reserved": false,
            "verification": {"object": "verification_otp", "status": "verified", "strategy": "email_code",
                             "attempts": 1, "expire_at": created_at + 600_000},
            "linked_to": [],
            "matches_sso_connection": false,
            "created_at": created_at,
            "updated_at": updated_at
        }],
        "phone_numbers": [],
        "web3_wallets": [],
        "passkeys": [],
        "password_enabled": true,
        "two_factor_enabled": false,
        "totp_enabled": false,
        "backup_code_enabled": false,
        "mfa_enabled_at": null,
        "mfa_disabled_at": null,
        "external_accounts": [],
        "saml_accounts": [],
        "enterprise_accounts": [],
        "last_sign_in_at": updated_at,
        "banned": false,
        "locked": false,
        "lockout_expires_in_seconds": null,
        "verification_attempts_remaining": null,
        "updated_at": updated_at,
        "created_at": created_at,
        "delete_self_enabled": true,
        "create_organization_enabled": true,
        "create_organizations_limit": null,
        "last_active_at": updated_at,
        "legal_accepted_at": created_at
    })
}

/// An OrganizationMembership object, embedding the whole organization and the user's public
/// data, as Clerk does.
pub fn membership(id: &str, org: &Value, user: &Value, role: &str, created_at: i64, updated_at: i64) -> Value {
    let email = user["email_addresses"][0]["email_address"].clone();
    json!({
        "object": "organization_membership",
        "id": id,
        "role": role,
        "role_name": if role.ends_with("admin") { "Admin" } else { "Member" },
        "permissions": ["org:sys_profile:manage", "org:sys_memberships:read"],
        "public_metadata": {},
        "private_metadata": {},
        "organization": org,
        "public_user_data": {
            "user_id": user["id"],
            "first_name": user["first_name"],
            "last_name": user["last_name"],
            "profile_image_url": user["image_url"],
            "image_url": user["image_url"],
            "has_image": true,
            "identifier": email
        },
        "created_at": created_at,
        "updated_at": updated_at
    })
}
