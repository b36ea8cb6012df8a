"""A whole session of `portainer-api` 1.22.1.1 from PyPI (the Swagger
client generated from Portainer 1.22's API description), unmodified,
against Berth's Portainer surface: status, the first administrator,
sign-in, users, teams and memberships, tags, endpoint groups, an endpoint
on the local engine, registries, the Docker Hub, settings, app templates,
a TLS upload, resource controls, a stack from start to end (moved to
another endpoint on the way), and the 1.x errors it raises.

Usage: python portainer_api_session.py BERTH_URL
Prints `session ok` at the end; any failed check raises.
"""

import json
import os
import sys
import tempfile

import portainer_api
from portainer_api.rest import ApiException

COMPOSE = 'version: "2"\nservices:\n  a:\n    image: busybox:latest\n    command: sleep 100000\n'
COMPOSE2 = 'version: "2"\nservices:\n  a:\n    image: busybox:latest\n    command: sleep 100001\n'


def refused(call, status):
    """`call` raises the 1.x error `status`, in Portainer's body."""
    try:
        call()
    except ApiException as e:
        assert e.status == status, (e.status, e.body)
        assert '"err"' in e.body, e.body
        return e.body
    raise AssertionError("expected %d" % status)


def main(url):
    cfg = portainer_api.Configuration()
    cfg.host = url + "/api"
    client = portainer_api.ApiClient(cfg)

    status = portainer_api.StatusApi(client).status_inspect()
    assert status.version.startswith("1."), status
    users = portainer_api.UsersApi(client)
    refused(users.user_admin_check, 404)
    admin = users.user_admin_init(
        portainer_api.UserAdminInitRequest(username="admin", password="adminpassword"))
    assert (admin.id, admin.role) == (1, 1), admin
    auth = portainer_api.AuthApi(client)
    refused(lambda: auth.authenticate_user(
        portainer_api.AuthenticateUserRequest(username="admin", password="wrong")), 422)
    jwt = auth.authenticate_user(
        portainer_api.AuthenticateUserRequest(username="admin", password="adminpassword")).jwt
    cfg.api_key["Authorization"] = jwt
    cfg.api_key_prefix["Authorization"] = "Bearer"

    # Users, teams, memberships.
    bob = users.user_create(portainer_api.UserCreateRequest(username="bob", password="bobpw", role=2))
    refused(lambda: users.user_create(
        portainer_api.UserCreateRequest(username="bob", password="x", role=2)), 409)
    assert [u["Username"] for u in users.user_list()] == ["admin", "bob"]
    assert users.user_inspect(bob.id).username == "bob"
    users.user_update(bob.id, portainer_api.UserUpdateRequest(password="bobpw2", role=2))
    check = users.user_password_check(bob.id, portainer_api.UserPasswordCheckRequest(password="bobpw2"))
    assert check.valid is True, check
    teams = portainer_api.TeamsApi(client)
    team = teams.team_create(portainer_api.TeamCreateRequest(name="ops"))
    assert teams.team_inspect(team.id).name == "ops"
    teams.team_update(team.id, portainer_api.TeamUpdateRequest(name="operations"))
    memberships = portainer_api.TeamMembershipsApi(client)
    m = memberships.team_membership_create(
        portainer_api.TeamMembershipCreateRequest(user_id=bob.id, team_id=team.id, role=2))
    memberships.team_membership_update(
        m.id, portainer_api.TeamMembershipUpdateRequest(user_id=bob.id, team_id=team.id, role=1))
    assert [x["Role"] for x in users.user_memberships_inspect(bob.id)] == [1]
    assert len(teams.team_memberships_inspect(team.id)) == 1

    # Tags, endpoint groups, an endpoint on the local engine.
    tags = portainer_api.TagsApi(client)
    tag = tags.tag_create(portainer_api.TagCreateRequest(name="prod"))
    refused(lambda: tags.tag_create(portainer_api.TagCreateRequest(name="prod")), 409)
    groups = portainer_api.EndpointGroupsApi(client)
    group = groups.endpoint_group_create(
        portainer_api.EndpointGroupCreateRequest(name="edge", description="d", labels=[], associated_endpoints=[]))
    assert [g["Name"] for g in groups.endpoint_group_list()] == ["Unassigned", "edge"]
    endpoints = portainer_api.EndpointsApi(client)
    local = endpoints.endpoint_create(name="local", endpoint_type=1, group_id=str(group.id))
    # (The client reads `GroupID` where Portainer, and Berth, write
    # `GroupId`: its model misses the group, as against Portainer itself.)
    assert (local.name, local.type) == ("local", 1), local
    assert [e["Name"] for e in endpoints.endpoint_list()] == ["local"]
    endpoints.endpoint_update(local.id, portainer_api.EndpointUpdateRequest(name="here", public_url="127.0.0.1"))
    assert endpoints.endpoint_inspect(local.id).name == "here"
    groups.endpoint_group_update(group.id, portainer_api.EndpointGroupUpdateRequest(name="edge2", description="d2"))
    assert groups.endpoint_group_inspect(group.id).name == "edge2"

    # Registries, the Docker Hub, settings.
    registries = portainer_api.RegistriesApi(client)
    registry = registries.registry_create(portainer_api.RegistryCreateRequest(
        name="r", type=3, url="registry.local:5000", authentication=True, username="u", password="secret"))
    assert registries.registry_inspect(registry.id).password == "", "passwords are never shown"
    registries.registry_update(registry.id, portainer_api.RegistryUpdateRequest(
        name="r2", url="registry.local:5000", authentication=False))
    hub = portainer_api.DockerhubApi(client)
    hub.docker_hub_update(portainer_api.DockerHubUpdateRequest(authentication=True, username="u", password="p"))
    assert hub.docker_hub_inspect().username == "u"
    settings = portainer_api.SettingsApi(client)
    settings.settings_update(portainer_api.SettingsUpdateRequest(
        logo_url="https://example.com/logo.png", authentication_method=1, templates_url=""))
    assert settings.settings_inspect().logo_url == "https://example.com/logo.png"
    assert settings.public_settings_inspect().logo_url == "https://example.com/logo.png"
    assert portainer_api.ExtensionsApi(client).extension_list() == []

    # App templates. The client sends the template's own key names
    # (`administrator_only`), which Portainer ignored and Berth reads too.
    # Its models read `id` and `repository.URL` where Portainer, and
    # Berth, write `Id` and `repository.url` (the model refuses a missing
    # URL): templates are read from the raw answers.
    templates = portainer_api.TemplatesApi(client)
    refused(lambda: templates.template_create(portainer_api.TemplateCreateRequest(
        type=1, title="t", description="d")), 400)
    raw = templates.template_create(portainer_api.TemplateCreateRequest(
        type=1, title="Web", description="A web server", image="busybox:latest",
        administrator_only=True, restart_policy="always"), _preload_content=False)
    template_id = json.loads(raw.data)["Id"]
    made = json.loads(templates.template_inspect(template_id, _preload_content=False).data)
    assert (made["title"], made["administrator_only"], made["restart_policy"]) == ("Web", True, "always"), made
    templates.template_update(template_id, portainer_api.TemplateUpdateRequest(title="Web server"))
    listed = json.loads(templates.template_list(_preload_content=False).data)
    assert [t["title"] for t in listed] == ["Web server"], listed
    templates.template_delete(template_id)
    refused(lambda: templates.template_inspect(template_id), 404)

    # A TLS file uploaded for an endpoint.
    upload = portainer_api.UploadApi(client)
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as pem:
        pem.write("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    try:
        upload.upload_tls("ca", str(local.id), file=pem.name)
        refused(lambda: upload.upload_tls("pem", str(local.id), file=pem.name), 400)
    finally:
        os.unlink(pem.name)

    # A stack, start to end, and a resource control for it.
    stacks = portainer_api.StacksApi(client)
    stack = stacks.stack_create(2, "string", local.id, body=portainer_api.StackCreateRequest(
        name="apistack", stack_file_content=COMPOSE))
    assert [s["Name"] for s in stacks.stack_list()] == ["apistack"]
    assert stacks.stack_file_inspect(stack.id).stack_file_content == COMPOSE
    stacks.stack_update(stack.id, portainer_api.StackUpdateRequest(stack_file_content=COMPOSE2, prune=True),
                        endpoint_id=local.id)
    assert stacks.stack_file_inspect(stack.id).stack_file_content == COMPOSE2
    # Moved to a second endpoint on the same engine: under its own name it
    # is refused, under a new one it goes.
    there = endpoints.endpoint_create(name="there", endpoint_type=1)
    refused(lambda: stacks.stack_migrate(stack.id, body=portainer_api.StackMigrateRequest(
        endpoint_id=there.id)), 409)
    moved = stacks.stack_migrate(stack.id, body=portainer_api.StackMigrateRequest(
        endpoint_id=there.id, name="apistack"[::-1]))
    # (Its Stack model reads `EndpointID` where Portainer writes `EndpointId`.)
    assert (str(moved.id), moved.name) == (str(stack.id), "kcatsipa"), moved
    stacks.stack_migrate(stack.id, body=portainer_api.StackMigrateRequest(endpoint_id=local.id, name="apistack"))
    endpoints.endpoint_delete(there.id)
    controls = portainer_api.ResourceControlsApi(client)
    controls.resource_control_create(portainer_api.ResourceControlCreateRequest(
        resource_id="apistack", type="stack", public=False, users=[bob.id], teams=[], sub_resource_i_ds=[]))
    refused(lambda: controls.resource_control_create(portainer_api.ResourceControlCreateRequest(
        resource_id="apistack", type="stack", public=True, users=[], teams=[], sub_resource_i_ds=[])), 409)
    stacks.stack_delete(stack.id, endpoint_id=local.id)
    assert stacks.stack_list() == []

    # Everything made, removed again.
    memberships.team_membership_delete(m.id)
    teams.team_delete(team.id)
    tags.tag_delete(tag.id)
    endpoints.endpoint_delete(local.id)
    groups.endpoint_group_delete(group.id)
    registries.registry_delete(registry.id)
    users.user_delete(bob.id)
    refused(lambda: users.user_inspect(bob.id), 404)
    print("session ok")


if __name__ == "__main__":
    main(sys.argv[1])
