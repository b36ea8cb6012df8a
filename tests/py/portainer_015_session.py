"""`portainer` 0.1b0 from PyPI (a client of Portainer 1.15's API),
unmodified, against Berth: it signs in, reads endpoints, teams, users and
memberships, creates a team, a user without a password (as for LDAP) and
a membership, an endpoint with TLS whose files it uploads afterwards (as
1.15 took them), and gives the endpoint to the user and the team.

Usage: python portainer_015_session.py BERTH_URL TLS_ADDRESS CA CERT KEY
Prints `session ok ENDPOINT_ID` at the end; any failed check raises.
"""

import sys

from portainer import Portainer


def main(url, address, ca, cert, key):
    p = Portainer(url, "admin", "adminpassword")
    assert p.jwt_token, "signed in"
    p.get_all_data()
    assert [u["Username"] for u in p.users] == ["admin"], p.users
    assert p.teams == [] and p.team_memberships == [], (p.teams, p.team_memberships)
    team = p.create_team("ops")
    assert team, "team"
    user = p.create_user("ldap-user")
    assert user and user["Role"] == 2, user
    membership = p.create_team_memberships(user["Id"], team["Id"], 2)
    assert membership, "membership"
    endpoint = p.create_endpoint("remote", address, tls=True)
    assert endpoint and endpoint["Status"] == 2, endpoint
    for certificate, path in (("ca", ca), ("cert", cert), ("key", key)):
        assert p.upload_tls(endpoint["Id"], certificate, path), certificate
    assert p.endpoint_access(endpoint["Id"], [user["Id"]], [team["Id"]])
    p.get_endpoints()
    [made] = [e for e in p.endpoints if e["Id"] == endpoint["Id"]]
    assert made["Status"] == 1 and made["AuthorizedTeams"] == [team["Id"]], made
    print("session ok %d" % endpoint["Id"])


if __name__ == "__main__":
    main(*sys.argv[1:6])
