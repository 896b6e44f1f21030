//! The classification table: ARM / Compute error codes to a failure [`Category`] and whether
//! the same request may succeed later unchanged (`transient`).
//!
//! This is the one place where Keel decides what an operation error means. [`RULES`] is read
//! top to bottom and the first matching row wins; each row names the codes it applies to
//! (compared case-insensitively: Microsoft spells `OverConstrainedAllocationRequest` and
//! `OverconstrainedAllocationRequest` both ways), an optional condition on the message, the
//! artifact publisher, the details or the HTTP status, and the vendor source it is taken from
//! (shorthands from the source list of `docs/protocols.md`: `vm-errors`, `arm-errors`, ...).
//!
//! Classify the *innermost* error: wrappers such as `DeploymentFailed`,
//! `ResourceDeploymentFailure`, `ResourceOperationFailure` or a `Conflict` that carries a
//! nested error say nothing about the cause ([`WRAPPER_CODES`]); the ARM normalizer unwraps
//! them before calling [`classify`].
//!
//! Messages are localized (Accept-Language), so a message pattern is only used where the code
//! is not enough: the VM-agent artifact (publisher `Microsoft.WindowsAzure.GuestAgent`, type
//! `CRPProd`), extension download failures that are really DNS or egress problems, the
//! internal-error variant of `AllocationFailed`, the image-not-generalized text that both
//! `OSProvisioningTimedOut` and `OSProvisioningClientError` carry, and the overloaded
//! `OperationNotAllowed` (quota, state, throttling and transient cases share the code and
//! HTTP 409). Every `OperationNotAllowed` pattern is an en-US substring; when none matches (a
//! non-English message) the row `operation-not-allowed-default` gives the safe answer:
//! `conflict`, not transient.
//!
//! ```
//! use keel_engine::normalize::classify::classify;
//! use keel_engine::Category;
//!
//! let c = classify(
//!     "ArtifactVersionNotFound",
//!     Some("No version found in the artifact repository that satisfies the requested version '' \
//!           for VM extension with publisher 'Microsoft.WindowsAzure.GuestAgent' and type 'CRPProd'."),
//!     None,
//!     &[],
//! );
//! assert_eq!(c.category, Category::VmAgent);
//! assert_eq!(c.rule, "guest-agent-artifact-not-found");
//!
//! let c = classify("overCONSTRAINEDallocationrequest", None, None, &[]);
//! assert_eq!(c.category, Category::Allocation);
//! ```

use crate::event::{Category, FailureDetail};

/// The outcome of [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Classification {
    /// The failure class.
    pub category: Category,
    /// Whether the same request may succeed later unchanged.
    pub transient: bool,
    /// The name of the [`RULES`] row that matched (`unknown-code` when none did).
    pub rule: &'static str,
}

/// Which error codes a [`Rule`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codes {
    /// Any of these codes, compared case-insensitively.
    AnyOf(&'static [&'static str]),
    /// Every code that starts with this prefix, compared case-insensitively.
    Prefix(&'static str),
    /// Every code.
    All,
}

/// The condition a [`Rule`] needs besides the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum When {
    /// No further condition.
    Always,
    /// The error's own message contains one of these substrings (case-insensitive).
    MessageContains(&'static [&'static str]),
    /// The message, or a detail's message or target, names one of these artifact publishers or
    /// types (case-insensitive substrings).
    ArtifactPublisher(&'static [&'static str]),
    /// One of the error's `details[]` has one of these codes (case-insensitive).
    DetailCode(&'static [&'static str]),
    /// The HTTP status of the failed call is this one.
    HttpStatus(i64),
    /// HTTP 429 and the response carried `x-ms-ratelimit-*` headers (see
    /// [`classify_response`]).
    RateLimitHeaders,
    /// Every one of these conditions holds.
    AllOf(&'static [When]),
}

/// One row of the classification table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rule {
    /// The row's name, unique, reported in [`Classification::rule`].
    pub name: &'static str,
    /// The codes it applies to.
    pub codes: Codes,
    /// The further condition.
    pub when: When,
    /// The failure class it assigns.
    pub category: Category,
    /// Whether the same request may succeed later unchanged.
    pub transient: bool,
    /// Where the row comes from: the vendor document (a shorthand of `docs/protocols.md`, or a
    /// URL) and, where the code or message was seen in the wild, the public report.
    pub source: &'static str,
}

/// Codes that only wrap the real error (the cause is in `details[]` or in a JSON string in
/// `message`). Never classify on them (`docs/protocols.md`, ARM shapes 3 and 4).
/// `Conflict` is a wrapper only when it carries a nested error; on its own it is a state
/// conflict.
pub const WRAPPER_CODES: &[&str] = &[
    "DeploymentFailed",
    "ResourceDeploymentFailure",
    "ResourceOperationFailure",
    "InvalidTemplateDeployment",
    "MultipleErrorsOccurred",
];

/// Whether `code` only wraps the real error (see [`WRAPPER_CODES`]).
pub fn is_wrapper(code: &str) -> bool {
    WRAPPER_CODES.iter().any(|w| w.eq_ignore_ascii_case(code))
}

const GUEST_AGENT: &[&str] = &["Microsoft.WindowsAzure.GuestAgent", "CRPProd"];
const ONA: Codes = Codes::AnyOf(&["OperationNotAllowed"]);
const THROTTLE_CODES: &[&str] = &[
    "TooManyRequests",
    "ResourceRequestsThrottled",
    "SubscriptionRequestsThrottled",
];

/// The classification table, read top to bottom; the first matching row wins. The last row
/// matches everything (`unknown-code`: category `unknown`, not transient).
pub static RULES: &[Rule] = &[
    // --- The VM agent and its artifacts --------------------------------------------------
    Rule {
        name: "guest-agent-artifact-not-found",
        codes: Codes::AnyOf(&[
            "ArtifactVersionNotFound",
            "ArtifactNotFound",
            "ExtensionNotFoundForCPUArchitecture",
        ]),
        when: When::ArtifactPublisher(GUEST_AGENT),
        category: Category::VmAgent,
        transient: true,
        source: "ArtifactVersionNotFound/ArtifactNotFound for the guest agent: the 2021-10-13 signature \
                 (MicrosoftLearning/AZ-104-MicrosoftAzureAdministrator#366) and the 2015 repository \
                 incident (Azure/azure-quickstart-templates#353); platform-transient, fixed region by region",
    },
    Rule {
        name: "artifact-not-found",
        codes: Codes::AnyOf(&[
            "ArtifactVersionNotFound",
            "ArtifactNotFound",
            "ExtensionNotFoundForCPUArchitecture",
        ]),
        when: When::Always,
        category: Category::Extension,
        transient: false,
        source: "vm-errors (ArtifactNotFound / ArtifactVersionNotFound: extension version not in the \
                 repository; chef-partners/azure-chef-extension#70); another code for the same class \
                 (ExtensionNotFoundForCPUArchitecture)",
    },
    Rule {
        name: "vm-artifact-repository-internal-error",
        codes: Codes::AnyOf(&["VMArtifactRepositoryInternalError"]),
        when: When::Always,
        category: Category::Internal,
        transient: true,
        source: "vm-errors; Azure/azure-quickstart-templates#521 (\"mostly looks like a transient error \
                 on the platform side\")",
    },
    Rule {
        name: "vm-agent-status-communication",
        codes: Codes::AnyOf(&["VMAgentStatusCommunicationError"]),
        when: When::Always,
        category: Category::VmAgent,
        transient: false,
        source: "vm-errors (guest/network dependent, often persistent; \
                 Azure/azure-powershell#5838)",
    },
    // --- OS provisioning ------------------------------------------------------------------
    Rule {
        name: "os-provisioning-image-not-prepared",
        codes: Codes::AnyOf(&["OSProvisioningTimedOut", "OSProvisioningClientError"]),
        when: When::MessageContains(&[
            "guest agent was detected running",
            "not been properly prepared",
        ]),
        category: Category::Image,
        transient: false,
        source: "vm-errors (OSProvisioningTimedOut, third message); a 2025 capture \
                 (kubernetes-sigs/windows-testing#496 shows the same text under OSProvisioningClientError)",
    },
    Rule {
        name: "os-provisioning-timed-out",
        codes: Codes::AnyOf(&["OSProvisioningTimedOut"]),
        when: When::Always,
        category: Category::ProvisioningTimeout,
        transient: false,
        source: "vm-errors (\"The VM may still finish provisioning successfully\") \
                 (poll first; a blind retry of the same image is usually futile)",
    },
    Rule {
        name: "os-provisioning-client-error",
        codes: Codes::AnyOf(&["OSProvisioningClientError"]),
        when: When::Always,
        category: Category::Image,
        transient: false,
        source: "vm-errors (OSProvisioningClientError rows)",
    },
    Rule {
        name: "os-provisioning-internal-error",
        codes: Codes::AnyOf(&["OSProvisioningInternalError"]),
        when: When::Always,
        category: Category::Internal,
        transient: true,
        source: "vm-errors (\"OS Provisioning failed for VM '{0}' due to an internal error\")",
    },
    // --- Extensions -----------------------------------------------------------------------
    Rule {
        name: "extension-management-internal-error",
        codes: Codes::AnyOf(&["VMExtensionManagementInternalError"]),
        when: When::Always,
        category: Category::Internal,
        transient: true,
        source: "vm-errors (\"Internal error occurred while processing VM extension\")",
    },
    Rule {
        name: "extension-download-network",
        codes: Codes::Prefix("VMExtension"),
        when: When::MessageContains(&[
            "could not be resolved",
            "unable to connect to the remote server",
        ]),
        category: Category::Network,
        transient: false,
        source: "VMExtensionProvisioningError with a download failure (custom DNS / no egress, \
                 alan-turing-institute/data-safe-haven#571)",
    },
    Rule {
        name: "extension-handler-non-transient",
        codes: Codes::AnyOf(&["VMExtensionHandlerNonTransientError"]),
        when: When::Always,
        category: Category::Extension,
        transient: false,
        source: "vm-errors (non-transient by definition; hashicorp/terraform-provider-azurerm#2303)",
    },
    Rule {
        name: "extension-provisioning-timeout",
        codes: Codes::AnyOf(&["VMExtensionProvisioningTimeout"]),
        when: When::Always,
        category: Category::Extension,
        transient: false,
        source: "vm-errors (extensionsTimeBudget, default 90 min; microsoft/PartsUnlimitedMRP#134)",
    },
    Rule {
        name: "extension-provisioning-error",
        codes: Codes::AnyOf(&["VMExtensionProvisioningError"]),
        when: When::Always,
        category: Category::Extension,
        transient: false,
        source: "vm-errors (usually the user's script or settings; \
                 Azure/custom-script-extension-linux#107)",
    },
    Rule {
        name: "extension-other",
        codes: Codes::Prefix("VMExtension"),
        when: When::Always,
        category: Category::Extension,
        transient: false,
        source: "vm-errors (VMExtension* codes)",
    },
    // --- Capacity -------------------------------------------------------------------------
    Rule {
        name: "allocation-internal-error",
        codes: Codes::AnyOf(&["AllocationFailed"]),
        when: When::MessageContains(&["internal error"]),
        category: Category::Internal,
        transient: true,
        source: "vm-errors (\"The VM allocation failed due to an internal error. Please retry later\"): \
                 an internal, not a capacity, failure",
    },
    Rule {
        name: "allocation-failed",
        codes: Codes::AnyOf(&["AllocationFailed"]),
        when: When::Always,
        category: Category::Allocation,
        transient: true,
        source: "arm-errors; vm-errors (capacity-transient; Azure/azure-cli#2401)",
    },
    Rule {
        name: "zonal-allocation-failed",
        codes: Codes::AnyOf(&["ZonalAllocationFailed"]),
        when: When::Always,
        category: Category::Allocation,
        transient: true,
        source: "public reports (openshift/release#5182; Azure/karpenter-provider-azure#892)",
    },
    Rule {
        name: "overconstrained-allocation",
        codes: Codes::Prefix("Overconstrained"),
        when: When::Always,
        category: Category::Allocation,
        transient: false,
        source: "vm-errors (OverConstrainedAllocationRequest); AKS zonalallocation-allocationfailed-error.md \
                 (OverconstrainedAllocationRequest, OverconstrainedZonalAllocationRequest): \
                 both spellings; not transient: the vendor's advice is to remove a constraint \
                 (GoogleCloudPlatform/PerfKitBenchmarker#1863)",
    },
    Rule {
        name: "sku-not-available",
        codes: Codes::AnyOf(&["SkuNotAvailable"]),
        when: When::Always,
        category: Category::Allocation,
        transient: false,
        source: "arm-errors; error-sku-not-available.md (effectively permanent for the \
                 size, region and subscription; Azure-Samples/azuresandbox#70)",
    },
    Rule {
        name: "invalid-template-sku-not-available",
        codes: Codes::AnyOf(&["InvalidTemplateDeployment"]),
        when: When::MessageContains(&["skunotavailable", "is currently not available in location"]),
        category: Category::Allocation,
        transient: false,
        source: "error-sku-not-available.md (SKU restriction caught at template validation; MicrosoftDocs/azure-docs#92474)",
    },
    // --- Quota ----------------------------------------------------------------------------
    Rule {
        name: "quota-exceeded",
        codes: Codes::AnyOf(&["QuotaExceeded", "ResourceQuotaExceeded", "DeploymentQuotaExceeded"]),
        when: When::Always,
        category: Category::Quota,
        transient: false,
        source: "arm-errors (ResourceQuotaExceeded, DeploymentQuotaExceeded); error-resource-quota.md; \
                 QuotaExceeded: Azure/ARO-RP pkg/util/azureerrors",
    },
    // --- Throttling -----------------------------------------------------------------------
    Rule {
        name: "throttled",
        codes: Codes::AnyOf(THROTTLE_CODES),
        when: When::Always,
        category: Category::Throttled,
        transient: true,
        source: "throttle; arm-limits (ResourceRequestsThrottled / SubscriptionRequestsThrottled / \
                 TooManyRequests; Azure/azqr#34)",
    },
    Rule {
        name: "too-many-redeployment-requests",
        codes: Codes::AnyOf(&["TooManyVMRedeploymentRequests"]),
        when: When::Always,
        category: Category::Throttled,
        transient: true,
        source: "vm-errors (\"Too many redeployment requests ... Please retry later\")",
    },
    // --- OperationNotAllowed (one code, many causes): status and details first, then the
    // --- en-US message patterns, then the safe default. ------------------------------------
    Rule {
        name: "operation-not-allowed-http-429",
        codes: ONA,
        when: When::HttpStatus(429),
        category: Category::Throttled,
        transient: true,
        source: "throttle (Compute throttling: OperationNotAllowed with HTTP 429 and Retry-After; ARM shape 6)",
    },
    Rule {
        name: "operation-not-allowed-throttle-detail",
        codes: ONA,
        when: When::DetailCode(&["TooManyRequests"]),
        category: Category::Throttled,
        transient: true,
        source: "throttle (details[].code TooManyRequests with the operation group as target; ARM shape 6)",
    },
    Rule {
        name: "operation-not-allowed-throttling",
        codes: ONA,
        when: When::MessageContains(&["too many requests"]),
        category: Category::Throttled,
        transient: true,
        source: "throttle (\"The server rejected the request because too many requests have been received \
                 for this subscription.\")",
    },
    Rule {
        name: "operation-not-allowed-quota",
        codes: ONA,
        when: When::MessageContains(&["quota"]),
        category: Category::Quota,
        transient: false,
        source: "arm-errors (OperationNotAllowed: exceeds the quota; \"...exceeding approved \
                 Total Regional Cores quota\", \"...exceeding quota limits of Core\"; Azure/azure_preview_modules#360)",
    },
    Rule {
        name: "operation-not-allowed-another-operation",
        codes: ONA,
        when: When::MessageContains(&["another operation is in progress"]),
        category: Category::Conflict,
        transient: true,
        source: "vm-errors (\"Operation '{0}' is not allowed on VM '{1}' since another operation is in progress.\"); \
                 transient, though the code is OperationNotAllowed",
    },
    Rule {
        name: "operation-not-allowed-after-some-time",
        codes: ONA,
        when: When::MessageContains(&["after some time"]),
        category: Category::Conflict,
        transient: true,
        source: "vm-errors (\"An ongoing operation is changing power state of Virtual Machine {0} to {1}. Please \
                 perform operation {2} after some time.\")",
    },
    Rule {
        name: "operation-not-allowed-size-not-in-cluster",
        codes: ONA,
        when: When::MessageContains(&[
            "not available in the cluster",
            "not be available in the existing allocation unit",
        ]),
        category: Category::Allocation,
        transient: true,
        source: "vm-errors (\"Unable to resize the VM because the requested size {0} is not available in the \
                 cluster where the VM is currently allocated\"; \"...may not be available in the existing \
                 allocation unit\"; fixable by deallocating)",
    },
    Rule {
        name: "operation-not-allowed-marked-for-deletion",
        codes: ONA,
        when: When::MessageContains(&["marked for deletion"]),
        category: Category::Conflict,
        transient: false,
        source: "vm-errors (\"...since the VM is marked for deletion. You can only retry the Delete operation\"); \
                 seen in cloud-barista/cb-spider#342",
    },
    Rule {
        name: "operation-not-allowed-deallocated",
        codes: ONA,
        when: When::MessageContains(&["deallocated"]),
        category: Category::Conflict,
        transient: false,
        source: "vm-errors (\"...since the VM is either deallocated or marked to be deallocated.\", \"...since \
                 the VM is not deallocated.\")",
    },
    Rule {
        name: "operation-not-allowed-power-state",
        codes: ONA,
        when: When::MessageContains(&[
            "since the vm is running",
            "requires the vm to be running",
            "when the vm is not running",
        ]),
        category: Category::Conflict,
        transient: false,
        source: "vm-errors (\"...since the VM is running.\", \"The operation requires the VM to be running (or \
                 set to run).\", \"Cannot modify extensions in the VM when the VM is not running.\")",
    },
    Rule {
        name: "operation-not-allowed-default",
        codes: ONA,
        when: When::Always,
        category: Category::Conflict,
        transient: false,
        source: "vm-errors, arm-errors: one code for many causes (fallback when no en-US pattern matches, e.g. a localized message)",
    },
    // --- Platform-internal and retryable --------------------------------------------------
    Rule {
        name: "retryable-error",
        codes: Codes::AnyOf(&["RetryableError"]),
        when: When::Always,
        category: Category::Internal,
        transient: true,
        source: "public reports (\"A retryable error occurred.\"; pulumi/pulumi-azure-native#1450, \
                 hashicorp/terraform-provider-azurerm#16928; GET the resource first, it may exist)",
    },
    Rule {
        name: "internal-execution-error",
        codes: Codes::AnyOf(&["InternalExecutionError"]),
        when: When::Always,
        category: Category::Internal,
        transient: true,
        source: "public reports (\"An internal execution error occurred. Please retry later.\"; \
                 microsoft/MCW-SAP-HANA-on-Azure#26)",
    },
    Rule {
        name: "internal-server-error",
        codes: Codes::AnyOf(&["InternalServerError"]),
        when: When::Always,
        category: Category::Internal,
        transient: true,
        source: "arm-errors (\"Caused by a temporary problem. Retry the deployment.\")",
    },
    Rule {
        name: "platform-internal-retry-later",
        codes: Codes::AnyOf(&[
            "VMRedeploymentFailed",
            "VMRedeploymentTimedOut",
            "VMStartTimedOut",
            "NetworkingInternalOperationError",
            "StorageAccountTooBusy",
        ]),
        when: When::Always,
        category: Category::Internal,
        transient: true,
        source: "vm-errors (\"...due to an internal error. Please retry later.\", \"It might finish successfully \
                 in sometime\", \"The VM may still start successfully\"; poll before \
                 retrying a timed-out start)",
    },
    Rule {
        name: "disk-image-not-ready",
        codes: Codes::AnyOf(&["DiskImageNotReady"]),
        when: When::Always,
        category: Category::Image,
        transient: true,
        source: "vm-errors (\"Disk image {0} is in {1} state. Please retry when image is ready.\")",
    },
    Rule {
        name: "another-operation-in-progress",
        codes: Codes::AnyOf(&["AnotherOperationInProgress"]),
        when: When::Always,
        category: Category::Conflict,
        transient: true,
        source: "arm-errors (\"Wait for concurrent operation to complete.\")",
    },
    Rule {
        name: "retryable-due-to-another-operation",
        codes: Codes::AnyOf(&["RetryableErrorDueToAnotherOperation"]),
        when: When::Always,
        category: Category::Conflict,
        transient: true,
        source: "arm-limits (Network RP returns 429 with this code when another operation locks the resource); \
                 rpc-async (a Retry-After alone is not throttling)",
    },
    Rule {
        name: "update-blocked-on-platform-update",
        codes: Codes::AnyOf(&["ResourceUpdateBlockedOnPlatformUpdate"]),
        when: When::Always,
        category: Category::Conflict,
        transient: true,
        source: "vm-errors (\"Resource cannot be updated at this time due to ongoing platform update. Please try \
                 again later.\")",
    },
    Rule {
        name: "conflict",
        codes: Codes::AnyOf(&["Conflict"]),
        when: When::Always,
        category: Category::Conflict,
        transient: false,
        source: "arm-errors (\"You're requesting an operation that isn't allowed in the resource's current \
                 state.\"); not transient until the other operation or state changes",
    },
    // --- Wrappers left without an inner error, and what is left ---------------------------
    Rule {
        name: "wrapper-without-inner-error",
        codes: Codes::AnyOf(WRAPPER_CODES),
        when: When::Always,
        category: Category::Unknown,
        transient: false,
        source: "rpc-common, arm-errors: a wrapper says nothing about the cause (never classify on it)",
    },
    Rule {
        name: "guest-agent-artifact-other-code",
        codes: Codes::All,
        when: When::AllOf(&[
            When::ArtifactPublisher(GUEST_AGENT),
            When::MessageContains(&["not found", "not be found", "no version found"]),
        ]),
        category: Category::VmAgent,
        transient: true,
        source: "fixtures/SOURCES.md notes (older incidents returned other codes for the same publisher/type: \
                 classify on the artifact, not on one code)",
    },
    Rule {
        name: "http-429-rate-limit-headers",
        codes: Codes::All,
        when: When::RateLimitHeaders,
        category: Category::Throttled,
        transient: true,
        source: "arm-limits; rpc-async (throttled only on 429 with a throttling code or x-ms-ratelimit-* headers)",
    },
    Rule {
        name: "http-429-not-throttling",
        codes: Codes::All,
        when: When::HttpStatus(429),
        category: Category::Unknown,
        transient: true,
        source: "arm-limits (some RPs return 429 for non-throttle transient conditions: transient, \
                 honour Retry-After, but not `throttled`)",
    },
    Rule {
        name: "unknown-code",
        codes: Codes::All,
        when: When::Always,
        category: Category::Unknown,
        transient: false,
        source: "no vendor source: an unknown code is never assumed retryable",
    },
];

/// Classifies the innermost error of a failed operation: its `code` (case-insensitive), its
/// message, the HTTP status of the failed call and its flattened `details[]`.
pub fn classify(
    code: &str,
    message: Option<&str>,
    http_status: Option<i64>,
    details: &[FailureDetail],
) -> Classification {
    classify_response(code, message, http_status, details, false)
}

/// [`classify`], also told whether the HTTP response carried `x-ms-ratelimit-*` headers (a
/// 429 with those is throttling whatever the code; arm-limits).
pub fn classify_response(
    code: &str,
    message: Option<&str>,
    http_status: Option<i64>,
    details: &[FailureDetail],
    rate_limit_headers: bool,
) -> Classification {
    let facts = Facts {
        code: code.trim(),
        message: message.unwrap_or("").to_ascii_lowercase(),
        details,
        http_status,
        rate_limit_headers,
    };
    for r in RULES {
        if codes_match(r.codes, facts.code) && holds(&r.when, &facts) {
            return Classification {
                category: r.category,
                transient: r.transient,
                rule: r.name,
            };
        }
    }
    Classification {
        category: Category::Unknown,
        transient: false,
        rule: "unknown-code",
    }
}

/// The row called `name`.
pub fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.name == name)
}

/// The `OperationNotAllowed` message patterns, in the order they are tried: (pattern, row).
/// The row `operation-not-allowed-default` applies when none matches.
pub fn operation_not_allowed_patterns() -> impl Iterator<Item = (&'static str, &'static Rule)> {
    RULES
        .iter()
        .filter(|r| r.codes == ONA)
        .flat_map(|r| match r.when {
            When::MessageContains(pats) => pats.iter().map(move |p| (*p, r)).collect::<Vec<_>>(),
            _ => Vec::new(),
        })
}

struct Facts<'a> {
    code: &'a str,
    /// The message, ASCII-lower-cased (the patterns are ASCII).
    message: String,
    details: &'a [FailureDetail],
    http_status: Option<i64>,
    rate_limit_headers: bool,
}

fn codes_match(codes: Codes, code: &str) -> bool {
    match codes {
        Codes::AnyOf(list) => list.iter().any(|c| c.eq_ignore_ascii_case(code)),
        Codes::Prefix(p) => code
            .get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p)),
        Codes::All => true,
    }
}

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    needles
        .iter()
        .any(|n| haystack.contains(n.to_ascii_lowercase().as_str()))
}

fn holds(when: &When, f: &Facts<'_>) -> bool {
    match when {
        When::Always => true,
        When::MessageContains(pats) => contains_any(&f.message, pats),
        When::ArtifactPublisher(names) => {
            contains_any(&f.message, names)
                || f.details.iter().any(|d| {
                    d.message
                        .as_deref()
                        .is_some_and(|m| contains_any(&m.to_ascii_lowercase(), names))
                        || d.target
                            .as_deref()
                            .is_some_and(|t| contains_any(&t.to_ascii_lowercase(), names))
                })
        }
        When::DetailCode(codes) => f
            .details
            .iter()
            .any(|d| codes.iter().any(|c| c.eq_ignore_ascii_case(d.code.trim()))),
        When::HttpStatus(s) => f.http_status == Some(*s),
        When::RateLimitHeaders => f.http_status == Some(429) && f.rate_limit_headers,
        When::AllOf(all) => all.iter().all(|w| holds(w, f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_are_unique_and_sourced() {
        let mut names: Vec<&str> = RULES.iter().map(|r| r.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate rule names");
        for r in RULES {
            assert!(!r.source.trim().is_empty(), "{} has no source", r.name);
        }
    }

    #[test]
    fn the_last_row_catches_everything() {
        let last = RULES.last().unwrap();
        assert_eq!(last.name, "unknown-code");
        assert_eq!(last.codes, Codes::All);
        assert_eq!(last.when, When::Always);
    }

    #[test]
    fn prefix_matching_never_slices_inside_a_character() {
        // A multi-byte character where the prefix would end must not panic.
        let c = classify("VMExtensioé", None, None, &[]);
        assert_eq!(c.rule, "unknown-code");
        let c = classify("ééééééééééé", None, None, &[]);
        assert_eq!(c.rule, "unknown-code");
    }

    #[test]
    fn wrappers() {
        assert!(is_wrapper("deploymentfailed"));
        assert!(!is_wrapper("Conflict"));
        assert_eq!(
            classify("ResourceDeploymentFailure", None, None, &[]).rule,
            "wrapper-without-inner-error"
        );
    }
}
