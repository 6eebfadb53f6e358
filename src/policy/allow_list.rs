//! Rule 6: the allow-list, user by user and group by group.

use super::*;

/// Some(decision) when a rule names this CN; None when no rule does.
pub(super) fn allow_list(
    csr: &CsrView,
    request: &CertificateRequest,
    policy: &Policy,
    trace: &mut Trace,
) -> Option<Decision> {
    let Some(common_name) = request.common_name.as_deref() else {
        trace.skip(RULE_ALLOW_LIST, "the subject has no CN");
        return None;
    };
    let mut first_failure = None;
    for rule in policy
        .allow_list
        .iter()
        .filter(|rule| rule.common_name.matches(common_name))
    {
        match allow_rule_problem(csr, request, rule) {
            None => {
                return Some(approve(
                    Reason::AutoApprovedAllowList,
                    format!(
                        "allow-listed by {}: subject {:?} requested by {:?}",
                        rule.common_name,
                        request.subject_string(),
                        csr.requester.username
                    ),
                ));
            }
            Some(failure) => {
                trace.pass(
                    RULE_ALLOW_LIST,
                    format!("{} matched but: {}", rule.common_name, failure.1),
                );
                first_failure.get_or_insert(failure);
            }
        }
    }
    match first_failure {
        Some((reason, message)) => Some(deny(reason, message)),
        None => {
            trace.skip(RULE_ALLOW_LIST, format!("no rule names CN {common_name:?}"));
            None
        }
    }
}

pub(super) fn allow_rule_problem(
    csr: &CsrView,
    request: &CertificateRequest,
    rule: &AllowRule,
) -> Option<(Reason, String)> {
    let common_name = request.common_name.as_deref().unwrap_or_default();
    if let Some(group) = request
        .organizations
        .iter()
        .find(|o| !rule.groups.contains(o))
    {
        return Some((
            Reason::DisallowedGroups,
            format!(
                "group O={group} is not allowed for CN {common_name:?} (allowed: [{}])",
                rule.groups.join(", ")
            ),
        ));
    }
    if let Some(uid) = &request.uid
        && !rule.uids.contains(uid)
    {
        return Some((
            Reason::DisallowedUid,
            format!(
                "UID {uid:?} is not allowed for CN {common_name:?} by this rule (allowed: [{}])",
                rule.uids.join(", ")
            ),
        ));
    }
    if let Some(problem) = signer_shape_problem(&csr.signer_name, &csr.usages, request) {
        return Some(problem);
    }
    // Stricter than the signer: an allow-listed identity is a name, never an address.
    if request.has_sans() {
        return Some((
            Reason::DisallowedSANs,
            "allow-listed client certificates carry no subject alternative names".into(),
        ));
    }
    let requester = &csr.requester;
    let is_self = requester.username == common_name;
    let named_user = rule.requester_users.contains(&requester.username);
    let named_group = requester
        .groups
        .iter()
        .any(|g| rule.requester_groups.contains(g));
    if !(is_self || named_user || named_group) {
        return Some((
            Reason::RequesterNotAllowed,
            format!(
                "requester {:?} may not ask for a certificate for CN {common_name:?}; only the \
                 subject itself{} may",
                requester.username,
                requester_list(rule)
            ),
        ));
    }
    None
}

pub(super) fn requester_list(rule: &AllowRule) -> String {
    let mut names: Vec<String> = rule
        .requester_users
        .iter()
        .map(|u| format!("user {u}"))
        .collect();
    names.extend(rule.requester_groups.iter().map(|g| format!("group {g}")));
    if names.is_empty() {
        String::new()
    } else {
        format!(" or {}", names.join(", "))
    }
}

pub(super) fn join(names: &BTreeSet<String>) -> String {
    names.iter().cloned().collect::<Vec<_>>().join(", ")
}
