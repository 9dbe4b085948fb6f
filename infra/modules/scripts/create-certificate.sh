#!/usr/bin/env bash
# Create (or keep) a non-exportable certificate in Key Vault and publish its PUBLIC parts.
#
# Runs inside a Microsoft.Resources/deploymentScripts (AzureCLI) container, signed in as a
# user-assigned identity that holds only "Key Vault Certificates Officer" on this one vault.
# Everything it reads comes from the certificates API (certificates/read): the DER "cer", the
# thumbprint, the validity. It never reads the certificate's secret, so the private key never
# leaves the vault - not even here.
#
# Inputs (environment): VAULT_NAME, CERT_NAME, CERT_POLICY (JSON, az CLI policy format),
#                       KEY_TYPE (RSA | RSA-HSM), VAULT_SKU (standard | premium).
# Output ($AZ_SCRIPTS_OUTPUT_PATH): {"certificateId","keyId","cer","thumbprint",
#                                     "validCertificates":[{"cer","thumbprint","notBefore","expires","id"}]}
# validCertificates lists every enabled, unexpired version, so re-running the deployment after a
# renewal registers old and new public keys on the Entra app side by side (rotation overlap).
set -euo pipefail

: "${VAULT_NAME:?VAULT_NAME is required}"
: "${CERT_NAME:?CERT_NAME is required}"
: "${CERT_POLICY:?CERT_POLICY is required}"
: "${KEY_TYPE:?KEY_TYPE is required}"
: "${VAULT_SKU:?VAULT_SKU is required}"
: "${AZ_SCRIPTS_OUTPUT_PATH:?AZ_SCRIPTS_OUTPUT_PATH is set by the deployment script service}"

fail() {
  echo "ERROR: $*" >&2
  exit 1
}

if [[ "$KEY_TYPE" == "RSA-HSM" && "${VAULT_SKU,,}" != "premium" ]]; then
  fail "key type RSA-HSM needs a Premium vault, and '$VAULT_NAME' is '$VAULT_SKU'." \
    "Deploy with keyVaultSku=premium, or use certificateKeyType=RSA."
fi

# A role assignment made moments ago can take minutes to reach the Key Vault data plane.
attempt=0
until az keyvault certificate list --vault-name "$VAULT_NAME" --maxresults 1 --output none; do
  attempt=$((attempt + 1))
  if ((attempt >= 30)); then
    fail "no data-plane access to '$VAULT_NAME' after $attempt attempts:" \
      "check the Certificates Officer role assignment and the vault firewall."
  fi
  echo "waiting for data-plane access to $VAULT_NAME (attempt $attempt)"
  sleep 20
done

policy_file="$(mktemp)"
printf '%s' "$CERT_POLICY" >"$policy_file"

exportable="$(az keyvault certificate show --vault-name "$VAULT_NAME" --name "$CERT_NAME" \
  --query 'policy.keyProperties.exportable' --output tsv 2>/dev/null || echo missing)"

case "${exportable,,}" in
  missing)
    echo "creating certificate $CERT_NAME in $VAULT_NAME"
    az keyvault certificate create --vault-name "$VAULT_NAME" --name "$CERT_NAME" \
      --policy "@$policy_file" --output none
    ;;
  false)
    echo "certificate $CERT_NAME exists; applying the policy to its future versions"
    az keyvault certificate set-attributes --vault-name "$VAULT_NAME" --name "$CERT_NAME" \
      --policy "@$policy_file" --output none
    ;;
  *)
    fail "certificate '$CERT_NAME' already exists with an exportable key (exportable=$exportable)." \
      "kvassert's template only publishes non-exportable keys: choose another certificateName."
    ;;
esac

# Creation is asynchronous; wait until the current version has its DER certificate.
attempt=0
until [[ -n "$(az keyvault certificate show --vault-name "$VAULT_NAME" --name "$CERT_NAME" \
  --query cer --output tsv 2>/dev/null || true)" ]]; do
  attempt=$((attempt + 1))
  status="$(az keyvault certificate pending show --vault-name "$VAULT_NAME" --name "$CERT_NAME" \
    --query status --output tsv 2>/dev/null || true)"
  if [[ "${status,,}" == "failed" ]]; then
    fail "Key Vault could not issue '$CERT_NAME':" \
      "$(az keyvault certificate pending show --vault-name "$VAULT_NAME" --name "$CERT_NAME" \
        --query 'error.message' --output tsv 2>/dev/null || true)"
  fi
  if ((attempt >= 60)); then
    fail "certificate '$CERT_NAME' was not issued within 10 minutes (status: ${status:-unknown})."
  fi
  sleep 10
done

read -r cert_id key_id cer thumbprint < <(az keyvault certificate show \
  --vault-name "$VAULT_NAME" --name "$CERT_NAME" \
  --query '[id, kid, cer, x509ThumbprintHex]' --output tsv)

# Every enabled, unexpired version (ISO-8601 UTC strings of one shape compare as text).
now="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
entries=()
while IFS=$'\t' read -r version_id enabled expires; do
  [[ "${enabled,,}" == "true" ]] || continue
  [[ -z "$expires" || "$expires" > "$now" ]] || continue
  IFS=$'\t' read -r v_cer v_thumbprint v_nbf v_exp < <(az keyvault certificate show \
    --id "$version_id" \
    --query '[cer, x509ThumbprintHex, attributes.notBefore, attributes.expires]' --output tsv)
  entries+=("{\"cer\":\"$v_cer\",\"thumbprint\":\"$v_thumbprint\",\"notBefore\":\"$v_nbf\",\"expires\":\"$v_exp\",\"id\":\"$version_id\"}")
done < <(az keyvault certificate list-versions --vault-name "$VAULT_NAME" --name "$CERT_NAME" \
  --query '[].[id, attributes.enabled, attributes.expires]' --output tsv)

((${#entries[@]} > 0)) || fail "certificate '$CERT_NAME' has no enabled, unexpired version."

# Every value is base64, hex, a URL or an ISO date: nothing needs JSON escaping.
joined="$(IFS=,; printf '%s' "${entries[*]}")"
printf '{"certificateId":"%s","keyId":"%s","cer":"%s","thumbprint":"%s","validCertificates":[%s]}\n' \
  "$cert_id" "$key_id" "$cer" "$thumbprint" "$joined" >"$AZ_SCRIPTS_OUTPUT_PATH"

echo "published ${#entries[@]} public certificate(s) for $CERT_NAME (current thumbprint $thumbprint)"
