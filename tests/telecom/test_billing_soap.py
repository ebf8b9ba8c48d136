"""Billing's SOAP client (zeep, from the hub's WSDL) against the hub's inbound SOAP endpoint:
accepted only with an API key allowed to post customer.billing.v1, answered with the id of the
message that was published, a retry with the same MessageId is the same message."""

from __future__ import annotations

from pathlib import Path

import pytest
import zeep.exceptions

from esbhub.bus.envelope import Envelope
from esbhub.db import upgrade
from esbhub.telecom import sims
from esbhub.telecom.demo import InprocessSoapEndpoint

RECORD = {
    "cust_id": "BIL00000001", "cust_name": "深圳市华信科技有限公司", "cert_no": "91440300MA5DC1234X", "prov": None,
    "city": "深圳", "tel": [{"type": "main", "no": "0755-26001234"}], "addr": [{"type": "billing", "text": "广东省深圳市南山区科技园路1号"}],
    "acct_no": "BA000000001", "parent_cust_id": None,
}


def test_billing_pushes_a_customer_change_over_soap_with_its_api_key(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(db)
    published: list[Envelope] = []
    ep = InprocessSoapEndpoint(lambda envs: published.extend(envs), db).start()
    try:
        key = ep.create_key()
        client = sims.BillingSoapClient(ep.url, key)
        mid = client.push(RECORD, "BILCHG-1")
        again = client.push(RECORD, "BILCHG-1")  # billing retries after a lost answer: same message
        client.close()
        assert mid == again == published[0].id
        assert [e.type for e in published] == ["customer.billing.v1"] * 2
        p = published[0].payload
        assert p["cust_name"] == RECORD["cust_name"] and p["tel"] == RECORD["tel"] and p.get("prov") is None
        assert published[0].headers["soap_operation"] == "PublishCustomerBilling"
        # a key allowed to post other types only is refused, and nothing is published
        _kid, other = ep.keys.create("crm", scopes=["ingest"], types=["party.v1"])
        refused = sims.BillingSoapClient(ep.url, other)
        with pytest.raises(zeep.exceptions.Fault, match="may not post 'customer.billing.v1'"):
            refused.push(RECORD, "BILCHG-2")
        refused.close()
        with pytest.raises(zeep.exceptions.Fault, match="unknown or revoked"):
            sims.BillingSoapClient(ep.url, "esb_nope.nope").push(RECORD, "BILCHG-3")
        assert len(published) == 2
    finally:
        ep.stop()
